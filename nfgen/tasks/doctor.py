"""The doctor behind ``nfgen check``: per-block numerical health of an ImageFlow.

Flow training fails in two ways a loss curve hides until too late: a block whose inverse no
longer undoes its forward ("not invertible": a near-singular 1x1 convolution, a collapsing
coupling scale) and non-finite values. ``diagnose`` pushes the model's own samples through
every block of the multi-scale body and measures each block on the activations it really sees.

The doctor keeps no list of layer types: it asks each flow (``nfgen.flows.base.Flow``) for its
``describe()``, ``stem``, ``any_size`` and ``diagnostics(x)``, and checks every log-det with the
same ``jacobian_logdet`` the test harness uses.

A class-conditional model is examined on samples of its classes in turn (labels ``0, 1, ...,
K-1, 0, ...``): every block sees its sample's class embedding as its context, as in training, and
the whole-model round trip goes through the class priors too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain

import torch
from torch import Tensor, nn

from nfgen.config.schema import Config
from nfgen.flows.base import Flow
from nfgen.flows.checks import jacobian_logdet
from nfgen.model.image_flow import ImageFlow, build_model, initialize

# Past any limit the model is not healthy. A round-trip error is max|inverse(forward(x)) - x|
# / max(1, max|x|): absolute for unit-scale activations, relative for large ones (rounding is).
RT32_MAX = 1e-3  # float32 keeps ~7 digits; 1e-3 is a quarter of an 8-bit pixel bin (1/256),
#                  so a few such blocks in a row flip decoded pixels.
RT64_MAX = 1e-8  # float64 rounds at ~1e-16: losing 8 digits is not rounding but an inverse that
#                  does not undo forward (a bug, or a map one step from singular).
LOGDET_MAX = 1e-6  # nats; both sides are exact up to float64 rounding (~1e-14 at these sizes),
#                    so a larger gap is a wrong log-det formula, hence a wrong likelihood.
COND_MAX = 1e4  # inverting a matrix of condition number k loses log10(k) digits: past 1e4,
#                 float32 keeps 3 of ~7. Glow's "not invertible" is W drifting to singular.
MIN_SCALE = 1e-4  # the inverse divides by the scale: below 1e-4 float32 rounding (~1e-7) grows
#                   past RT32_MAX. The default soft clamp (scale >= e^-2) never gets here.
MAX_JACOBIAN_DIMS = 1024  # the Jacobian is D x D: D backward passes, a D^3 slogdet
MAX_JACOBIAN_WORK = 5e9  # ~ D x pixels x parameters multiply-adds: a few seconds on a laptop CPU
CROPS = (4, 2)  # spatial crops, largest first, for blocks that work at any size
MAX_LISTED = 8  # problems spelled out in the verdict line; past that the report lists them all
ACTNORM_INIT_BATCH = 32  # random images for a fresh model's data-dependent actnorm init
# How a block's measure combines those its flows report (``Flow.diagnostics``): the worst one.
WORST = {"cond": max, "min_scale": min}


@dataclass
class BlockReport:
    """One block's measures; ``None`` where a measure does not apply or was skipped."""

    name: str  # e.g. "level0.step3"
    kind: str  # e.g. "Sequential: ActNorm, InvConv1x1LU, Coupling"
    shape: tuple[int, ...]  # input C, H, W
    roundtrip32: float = math.nan
    roundtrip64: float = math.nan
    logdet_error: float | None = None  # |analytic - slogdet(autograd Jacobian)|, float64
    logdet_at: str = "-"  # spatial size the log-det was checked at, or "skip"
    cond: float | None = None  # largest 1x1-conv condition number in the block
    min_scale: float | None = None  # smallest coupling exp(log_s) on the real activations
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Report:
    """The diagnosis: a row per block, whole-model round trips, and every problem found
    (each naming its block or part and the measure)."""

    inputs: str
    blocks: list[BlockReport] = field(default_factory=list)
    model_roundtrip32: float = math.nan
    model_roundtrip64: float = math.nan
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for a block of code and restore it afterwards (no hidden global state)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _nonfinite(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    return [f"non-finite values in parameter {n}" for n, t in named if t.is_floating_point() and not torch.isfinite(t).all()]


def fresh_model(config: Config, seed: int = 0, device: str | torch.device = "cpu") -> ImageFlow:
    """A newly built model whose actnorms got their data-dependent init from random uint8
    images (a conditional model's: with their classes in turn), as training's first step would
    give them; in eval mode."""
    device = torch.device(device)
    with _seeded(seed, device):
        model = build_model(config).to(device)
        x = torch.randint(0, 256, (ACTNORM_INIT_BATCH, *model.shape), dtype=torch.uint8, device=device)
        initialize(model, x, labels=_labels(model, ACTNORM_INIT_BATCH))
    return model.eval()


def _labels(model: ImageFlow, n: int) -> Tensor | None:
    """The classes the doctor examines a conditional model on: ``0, 1, ..., K-1, 0, ...``
    (None for an unconditional model)."""
    if not model.num_classes:
        return None
    return torch.arange(n, device=next(model.parameters()).device) % model.num_classes


def _body_context(model: ImageFlow, labels: Tensor | None) -> Tensor | None:
    """What the model's body sees as its context for ``labels``: their class embedding if the
    body is conditional (``class_in_body``), else None."""
    if labels is None or not model.class_in_body:
        return None
    return model.context(labels, labels.shape[0])


def _inputs(model: ImageFlow, n: int, seed: int, problems: list[str], labels: Tensor | None = None) -> Tensor:
    """The model's own samples in u-space: for a trained model, the inputs its blocks were
    fitted to (random images sit off the data manifold and would flag problems that real data
    never meets). Clamped into [0, 1) as data is; non-finite samples are a problem themselves
    and are replaced by uniform noise, so that every block can still be measured."""
    ref = next(model.parameters())
    with _seeded(seed, ref.device):
        try:
            u = model.sample_continuous(n, denoise=False, labels=labels)  # generation mode: the noisy images it was fitted to
        except RuntimeError as e:
            problems.append(f"sampling failed ({_first_line(e)}); blocks checked on uniform noise")
            u = torch.rand(n, *model.shape, dtype=ref.dtype, device=ref.device)
        bad = ~torch.isfinite(u).flatten(1).all(1)
        if bad.any():
            problems.append(f"sampling: {int(bad.sum())} of {n} samples not finite (replaced by uniform noise for the checks)")
            u[bad] = torch.rand_like(u[bad])
    return u.clamp(0.0, 1.0 - 1e-6)  # top of the last bin, still below 1 in float32


def _any_size(block: nn.Module) -> bool:
    """True if every flow inside says it works at any spatial size (none holds a buffer or
    parameter sized to the image, as a checkerboard mask or the top prior does)."""
    return all(m.any_size for m in block.modules() if isinstance(m, Flow))


def _worst(measures: list[dict[str, float]]) -> dict[str, float]:
    """Per measure, the worst value any flow reported (NaN if any reported NaN)."""
    out = {}
    for key, pick in WORST.items():
        values = [m[key] for m in measures if key in m]
        if values:
            out[key] = math.nan if any(math.isnan(v) for v in values) else pick(values)
    return out


def _round_trip(block: Flow, x: Tensor, label: str, row: BlockReport,
                context: Tensor | None = None) -> tuple[float, Tensor | None]:
    """Round-trip error of a block, and its forward output (``None`` if forward failed)."""
    z = None
    try:
        z, ld = block(x, context)
        x_back, ld_inv = block.inverse(z, context)
    except RuntimeError as e:
        row.problems.append(f"{label} {'inverse' if z is not None else 'forward'} failed: {_first_line(e)}")
        return math.nan, z
    parts = {"forward output": z, "forward log-det": ld, "inverse output": x_back, "inverse log-det": ld_inv}
    bad = [what for what, t in parts.items() if not torch.isfinite(t).all()]
    if bad:
        row.problems.append(f"non-finite {label} {', '.join(bad)}")
    return ((x_back - x).abs().max() / x.abs().max().clamp(min=1)).item(), z


def _logdet_check(block: Flow, x: Tensor, row: BlockReport, context: Tensor | None = None) -> None:
    """Analytic log-det against ``slogdet`` of the float64 autograd Jacobian on one sample,
    cropped to a few pixels where the block allows it (its formula does not depend on size)."""
    h, w = x.shape[2:]
    n_params = max(1, sum(p.numel() for p in block.parameters()))
    for s in CROPS if _any_size(block) else (max(h, w),):
        xs = x[:, :, :s, :s]
        dims, work = xs[0].numel(), xs[0].numel() * xs.shape[2] * xs.shape[3] * n_params
        if dims <= MAX_JACOBIAN_DIMS and work <= MAX_JACOBIAN_WORK:
            break
    else:
        where = f"even at {xs.shape[2]}x{xs.shape[3]}" if _any_size(block) else f"at its fixed size {h}x{w}"
        row.logdet_at = "skip"
        row.notes.append(f"log-det check skipped: a {dims}-dim Jacobian {where} costs ~{work:.0e} multiply-adds "
                         f"(limits {MAX_JACOBIAN_DIMS} dims, {MAX_JACOBIAN_WORK:.0e})")
        return
    row.logdet_at = f"{xs.shape[2]}x{xs.shape[3]}"
    try:  # a singular Jacobian (-inf) can match no finite log-det: the error is inf
        row.logdet_error = (block(xs, context)[1][0] - jacobian_logdet(block, xs, context)[0]).abs().item()
    except RuntimeError as e:
        row.problems.append(f"log-det check failed: {_first_line(e)}")


def _judge(row: BlockReport) -> None:
    """Turn the measures into problems; NaN measures are named if nothing else explains them."""
    checks = [("float32 round trip", row.roundtrip32, RT32_MAX, 1), ("float64 round trip", row.roundtrip64, RT64_MAX, 1),
              ("log-det error", row.logdet_error, LOGDET_MAX, 1), ("1x1-conv condition number", row.cond, COND_MAX, 1),
              ("smallest coupling scale", row.min_scale, MIN_SCALE, -1)]
    for label, value, limit, sign in checks:
        if value is not None and sign * value > sign * limit:
            row.problems.append(f"{label} {value:.2g} {'>' if sign > 0 else '<'} {limit:g}")
    nans = [label for label, value, *_ in checks if value is not None and math.isnan(value)]
    if nans and not row.problems:
        row.problems.append("non-finite " + ", ".join(nans))


def _check_block(row: BlockReport, b64: Flow, b32: Flow, x: Tensor,
                 c64: Tensor | None = None, c32: Tensor | None = None) -> Tensor | None:
    """Measure one block on its float64 input ``x`` (and context: the class embedding in each
    precision, or None); returns its float64 forward output."""
    row.problems += _nonfinite(chain(b64.named_parameters(), b64.named_buffers()))
    seen: list[tuple[Flow, Tensor, Tensor | None]] = []  # each flow's input, via a pre-hook

    def record(flow: Flow, args: tuple, kwargs: dict) -> None:
        seen.append((flow, args[0], args[1] if len(args) > 1 else kwargs.get("context")))

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in b64.modules() if isinstance(m, Flow)]
    try:
        row.roundtrip64, out = _round_trip(b64, x, "float64", row, c64)
    finally:
        for hook in hooks:
            hook.remove()
    row.roundtrip32, _ = _round_trip(b32, x.float(), "float32", row, c32)
    worst = _worst([flow.diagnostics(xi, ctx) for flow, xi, ctx in seen])  # on the activations each really saw
    row.cond, row.min_scale = worst.get("cond"), worst.get("min_scale")
    _logdet_check(b64, x[:1], row, None if c64 is None else c64[:1])
    _judge(row)
    return out


def _model_round_trip(model: ImageFlow, u: Tensor, label: str, limit: float, problems: list[str],
                      labels: Tensor | None = None) -> float:
    """u -> z -> u through preprocessing, the whole body and a conditional model's class priors
    (u is in [0, 1): absolute error)."""
    body_context = _body_context(model, labels)
    priors = [] if labels is None or model.class_priors is None else list(model.class_priors)
    context = None if labels is None else model.context(labels, labels.shape[0])
    try:
        zs, _ = model.body(model.preprocess(u)[0], body_context)
        if priors:  # z -> standardised -> z, each latent through its class prior and back
            zs = [p.inverse(p(z, context)[0], context)[0] for p, z in zip(priors, zs)]
        err = (model.preprocess.inverse(model.body.inverse(zs, body_context)[0])[0] - u).abs().max().item()
    except RuntimeError as e:
        problems.append(f"whole model: {label} round trip failed: {_first_line(e)}")
        return math.nan
    if not err <= limit:
        problems.append(f"whole model: {label} round trip " + ("not finite" if math.isnan(err) else f"{err:.2g} > {limit:g}"))
    return err


def _walk(report: Report, m64: ImageFlow, m32: ImageFlow, x: Tensor, generator: torch.Generator,
          labels: Tensor | None = None) -> None:
    """Follow ``MultiScaleFlow.forward`` block by block, adding a checked row for each."""
    c64, c32 = _body_context(m64, labels), _body_context(m32, labels)
    for names, l64, l32 in zip(m64.body.block_names(), m64.body.levels, m32.body.levels):
        for name, b64, b32 in zip(names, l64.flow.flows, l32.flow.flows):
            row = BlockReport(name, b64.describe(), tuple(x.shape[1:]))
            report.blocks.append(row)
            if not torch.isfinite(x).all():
                x = torch.where(torch.isfinite(x), x, torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
                row.notes.append("non-finite input from an earlier block replaced by N(0, 1) noise")
            out = _check_block(row, b64, b32, x, c64, c32)
            if out is None:
                row.problems.append("forward failed, so no later block was checked")
                return
            x = out
        if l64.split:
            x = x.chunk(2, dim=1)[0]  # as MultiScaleFlow.forward: the first half goes on


@torch.no_grad()
def diagnose(model: ImageFlow, n: int = 8, seed: int = 0) -> Report:
    """Measure every block of ``model``'s body on ``n`` of its own samples (see ``Report``),
    on float64 and float32 copies; ``model`` itself is left untouched."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    m64, m32 = copy.deepcopy(model).double().eval(), copy.deepcopy(model).float().eval()
    labels = _labels(m64, n)
    classes = "" if labels is None else f", classes {_classes(labels)}"
    report = Report(inputs=f"{n} model samples (seed {seed}{classes}) clamped into [0, 1)")
    in_body = {id(t) for t in chain(m64.body.parameters(), m64.body.buffers())}
    other = _nonfinite((k, t) for k, t in chain(m64.named_parameters(), m64.named_buffers()) if id(t) not in in_body)
    u = _inputs(m64, n, seed, other, labels)
    report.model_roundtrip64 = _model_round_trip(m64, u, "float64", RT64_MAX, other, labels)
    report.model_roundtrip32 = _model_round_trip(m32, u.float(), "float32", RT32_MAX, other, labels)
    _walk(report, m64, m32, m64.preprocess(u)[0], torch.Generator(u.device).manual_seed(seed), labels)
    report.problems = [f"{row.name}: {p}" for row in report.blocks for p in row.problems] + other  # causes first
    return report


def _classes(labels: Tensor) -> str:
    shown = ", ".join(map(str, labels[:4].tolist()))
    return shown + (", ..." if len(labels) > 4 else "")


def _num(value: float | None, spec: str = ".1e") -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: Report) -> str:
    """A table with a row per block, then the whole-model round trips, notes and limits."""
    head = ("block", "input", "rt f32", "rt f64", "log-det err", "at", "cond(1x1)", "min scale", "")
    rows = [head] + [(f"{b.name} ({b.kind})", "x".join(map(str, b.shape)), _num(b.roundtrip32), _num(b.roundtrip64),
                      _num(b.logdet_error), b.logdet_at, _num(b.cond, ".3g"), _num(b.min_scale, ".3g"),
                      "FAIL" if b.problems else "ok") for b in report.blocks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"inputs: {report.inputs}; rt = max|inverse(forward(x)) - x| / max(1, max|x|); "
             "log-det err: against the float64 autograd Jacobian, one sample, at the size shown"]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.append(f"whole model u -> z -> u round trip: float32 {report.model_roundtrip32:.1e}, "
                 f"float64 {report.model_roundtrip64:.1e}")
    lines += [f"note: {b.name}: {note}" for b in report.blocks for note in b.notes]
    if len(report.problems) > MAX_LISTED:  # more than the verdict line spells out
        lines += [f"problem: {p}" for p in report.problems]
    lines.append(f"limits: rt f32 <= {RT32_MAX:g}, rt f64 <= {RT64_MAX:g}, log-det err <= {LOGDET_MAX:g}, "
                 f"cond <= {COND_MAX:g}, min scale >= {MIN_SCALE:g}, every value finite")
    return "\n".join(lines)


def verdict(report: Report) -> str:
    """One line: ``healthy: <summary>`` or ``NOT healthy: <problems>``."""
    if not report.healthy:
        more = len(report.problems) - MAX_LISTED
        tail = f"; and {more} more (listed above)" if more > 0 else ""
        return "NOT healthy: " + "; ".join(report.problems[:MAX_LISTED]) + tail
    conds = [b.cond for b in report.blocks if b.cond is not None]
    scales = [b.min_scale for b in report.blocks if b.min_scale is not None]
    return (f"healthy: all {len(report.blocks)} blocks within limits (worst float32 round trip "
            f"{max(b.roundtrip32 for b in report.blocks):.1e}"
            + (f", largest 1x1-conv condition number {max(conds):.3g}" if conds else "")
            + (f", smallest coupling scale {min(scales):.3g}" if scales else "") + ")")
