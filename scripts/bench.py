"""Benchmark nfgen's real training step and sampling, optionally beside normflows' Glow.

    python scripts/bench.py --config quickstart.yaml
    python scripts/bench.py --config quickstart.yaml --compare-normflows
    python scripts/bench.py --config glow_cifar.yaml --set model.glow.steps=8 --set model.glow.hidden=128 \\
        --batch 16 --compare-normflows --rounds 3 --json-out bench.json

For one config it measures training images/s (nfgen's own ``train_step``: forward, backward,
gradient clipping and the optimizer update, after actnorm's data-dependent init and
``--warmup`` untimed steps; median over ``--repeats``), sampling images/s (``model.sample``),
peak memory, parameter count and forward FLOPs per image (``torch.utils.flop_counter``,
which counts matrix multiplies and convolutions, not elementwise ops). It prints a table and
then one JSON line.

Each measured phase (nfgen train, nfgen sample, normflows train, normflows sample) runs in a
fresh process of this script (the hidden ``--phase`` flag), so every peak is that phase's
own: peak RSS (``ru_maxrss``) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. The
baseline, taken after imports, model, optimizer and input batch are built, is reported too,
so peak minus baseline shows the activations and optimizer state.

Timings are only as good as the machine is quiet: each phase also records how many cores other
processes kept busy while it was timed, and the report warns when that, or disagreement
between repeats, makes the figures unreliable.

The images are random uint8 (uniform over 0..255) of the config's ``model.image_shape``: the
speed of a flow does not depend on pixel values, and no data set has to be present.

``--compare-normflows`` (``pip install -e '.[bench]'``) builds normflows' multi-scale Glow
exactly as its own Glow example does (GlowBlock x K per level, Squeeze, Merge, a GlowBase
prior per level, unconditional) at the same levels, steps, hidden width, image shape and batch,
trains it with the same optimizer and learning rate, and reports every figure as the ratio
nfgen / normflows measured in one run on one machine. ``DIFFERENCES`` below says how the two
models differ inside that shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from nfgen import build_model, load_config
from nfgen.cli.support import script_main
from nfgen.config.schema import Config, validate
from nfgen.model.image_flow import initialize
from nfgen.training.memory import saved_activation_bytes
from nfgen.training.step import MicroBatch, autocast, make_forward, make_optimizer, train_step

DIFFERENCES = """\
Same shape, different details (why the parameter counts differ):
  - conditioner: nfgen conv3x3 (no bias) -> actnorm -> ReLU -> conv1x1 (no bias) -> actnorm -> ReLU
    -> zero-init conv3x3 * exp(3 log_gain); normflows ConvNet2d conv3x3 -> ReLU -> conv1x1 -> ReLU
    -> zero-init conv3x3, all with bias, no actnorm.
  - coupling scale: nfgen exp(2 tanh(s / 2)); normflows sigmoid(s + 2) (Glow's).
  - priors: nfgen a learned conditional prior per split (zero-init conv3x3 of the kept half gives
    mean and log-std) and a learned per-position top prior; normflows GlowBase per level, a learned
    per-channel mean and log-scale, unconditional.
  - step order (data -> latent) is the same: actnorm -> LU 1x1 conv -> affine channel coupling.
    normflows' sampling direction inverts L and U in float64 on every call.
  - train step: both from the same uint8 batch, uniform dequantization at n_bits, same optimizer;
    nfgen also shifts to [-1/2, 1/2), returns bits/dim and clips the gradient norm (train.grad_clip);
    normflows is its example's step: forward_kld (mean NLL in nats), skip if non-finite, backward, step.
  - sampling: nfgen returns quantised uint8 images; normflows float images and their log-density."""

MARK = "BENCH_PHASE_RESULT "  # prefixes the one stdout line a phase process reports
MiB = 2**20


# ------------------------------------------------------------------ shared by the phases
def load(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config, args.set)
    if args.image_size:  # the benchmark reads no data set, so only the model's shape must be valid
        c = cfg.model.image_shape[0]
        cfg = validate(dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, image_shape=(c, args.image_size, args.image_size))))
    return cfg


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / MiB  # macOS reports bytes


def memory_mark(device: torch.device) -> dict[str, float]:
    """Peak memory so far: RSS always, and CUDA allocations on a GPU."""
    out = {"rss_mib": peak_rss_mib()}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["cuda_mib"] = torch.cuda.max_memory_allocated(device) / MiB
    return out


def reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def busy_cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds all processes have used, this process's), or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def measure(step: Callable[[], object], n_images: int, args: argparse.Namespace,
            device: torch.device) -> dict[str, object]:
    """``--warmup`` untimed calls, then ``--repeats`` timings of at least one call and at
    least ``--min-time`` seconds each; images/s is the median over the repeats.

    Also how many cores other processes kept busy meanwhile: with every core in use, torch's
    thread pool waits for descheduled threads and small ops slow down many times over.
    """
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    rates, seconds = [], []
    before, start_all = busy_cpu_seconds(), time.perf_counter()
    for _ in range(args.repeats):
        calls, start = 0, time.perf_counter()
        while True:
            step()
            sync()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= args.min_time:
                break
        rates.append(calls * n_images / elapsed)
        seconds.append(elapsed / calls)
    after, wall = busy_cpu_seconds(), time.perf_counter() - start_all
    others = None if before is None or after is None else max(
        0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall)
    return {"images_per_s": statistics.median(rates), "images_per_s_repeats": rates,
            "s_per_call": statistics.median(seconds), "other_processes_cores": others}


def print_profile(step: Callable[[], object], device: torch.device, calls: int = 5) -> None:
    """torch.profiler's table of the ops that take the most time in ``calls`` steps (stderr)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile of {calls} nfgen training steps:\n"
          + prof.key_averages().table(sort_by=key, row_limit=25), file=sys.stderr)


class FlopCount(TorchDispatchMode):
    """FLOPs by torch's own formulas (``flop_counter.flop_registry``, what ``FlopCounterMode``
    counts), without ``FlopCounterMode``'s module tracker: its backward hooks refuse the
    ``autograd.grad`` that a generation-mode model's denoising step takes inside sampling."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def flops_per_image(fn: Callable[[], object], n_images: int) -> float:
    """FLOPs of one call without gradients (sampling), per image."""
    with torch.no_grad(), FlopCount() as counter:
        fn()
    return counter.total / n_images


def step_flops_per_image(fn: Callable[[], object], n_images: int) -> float:
    """FLOPs of one whole training step, forward and backward, per image (run eagerly)."""
    with FlopCount() as counter:
        fn()
    return counter.total / n_images


def matmul_flops_per_s(device: torch.device, threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The float32 rate of an ``n x n`` matrix product on this device at ``threads`` threads: the
    ceiling a training step's FLOP rate is compared with."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:  # the first two warm up
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def random_images(n: int, shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8)


def first_lr(cfg: Config) -> float:
    """The learning rate of the trainer's first step (the start of its linear warm-up). Timing
    at the full rate from a fresh init would make deep models diverge within a step or two, and
    a diverged step skips its update, so it would time less work."""
    t = cfg.train
    return t.lr / t.warmup_steps if t.warmup_steps else t.lr


def plain_optimizer(params, cfg: Config) -> torch.optim.Optimizer:
    """normflows' example step uses torch's default (per-parameter) optimizer implementation."""
    t = cfg.train
    opt_cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.Adamax
    return opt_cls(params, lr=first_lr(cfg), weight_decay=t.weight_decay)


def random_labels(model: torch.nn.Module, n: int, device: torch.device) -> torch.Tensor | None:
    """Uniform random classes for a class-conditional model (None for an unconditional one)."""
    return torch.randint(0, model.num_classes, (n,), device=device) if model.num_classes else None


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ nfgen phases
def nfgen_train(args: argparse.Namespace, cfg: Config, device: torch.device) -> dict:
    model = build_model(cfg).to(device)
    optimizer = make_optimizer(model.parameters(), dataclasses.replace(cfg.train, lr=first_lr(cfg)))  # the trainer's own
    x = random_images(args.batch, tuple(cfg.model.image_shape))
    labels = random_labels(model, args.batch, device)
    reset_cuda_peak(device)
    base = memory_mark(device)
    initialize(model, x.to(device), labels=labels)  # actnorm's data-dependent init, as the trainer does first
    forward = make_forward(model, cfg.train)
    last = []

    def step() -> None:
        last.append(train_step(forward, model, optimizer, [MicroBatch(x, labels=labels)], cfg.train, device))

    timing = measure(step, args.batch, args, device)
    peak = memory_mark(device)
    if args.profile:
        print_profile(step, device)
    xd = x.to(device)
    with autocast(device, cfg.train.amp):
        saved = saved_activation_bytes(lambda: model(xd, labels=labels).float().mean(), model)
    return {**timing, "base": base, "peak": peak, "params": n_params(model), "saved_mib": saved / MiB,
            "forward_flops_per_image": flops_per_image(lambda: model(xd, labels=labels), args.batch),
            "step_flops_per_image": step_flops_per_image(
                lambda: train_step(model, model, optimizer, [MicroBatch(x, labels=labels)], cfg.train, device), args.batch),
            "level_shapes": [list(lv.out_shape) for lv in model.body.levels],
            "last_loss": last[-1].bpd, "updates_skipped": sum(not r.applied for r in last)}


def nfgen_sample(args: argparse.Namespace, cfg: Config, device: torch.device) -> dict:
    model = build_model(cfg).to(device)
    # Initialise actnorm on a few images only, so this phase's peak is sampling's own.
    n_init = min(args.batch, 8)
    initialize(model, random_images(n_init, tuple(cfg.model.image_shape)).to(device),
               labels=random_labels(model, n_init, device))
    model.eval()
    labels = random_labels(model, args.batch, device)
    reset_cuda_peak(device)
    base = memory_mark(device)
    timing = measure(lambda: model.sample(args.batch, args.temperature, labels=labels), args.batch, args, device)
    peak = memory_mark(device)
    return {**timing, "base": base, "peak": peak, "flops_per_image": flops_per_image(
        lambda: model.sample(args.batch, args.temperature, labels=labels), args.batch)}


# ------------------------------------------------------------------ normflows phases
def build_normflows_glow(shape: tuple[int, int, int], levels: int, steps: int, hidden: int):
    """normflows' multi-scale Glow as in its Glow example, unconditional. Level ``i`` counts
    from the coarsest latent (normflows' ``forward`` is latent -> data); returns the model and
    the shape each level's blocks act on, listed from the data side as nfgen lists them."""
    import normflows as nf

    # normflows' LU init calls the deprecated torch.lu; the warning says nothing about speed.
    warnings.filterwarnings("ignore", message="torch.lu is deprecated")
    c, h, w = shape
    q0, merges, flows, acted_on = [], [], [], []
    for i in range(levels):
        channels = c * 2 ** (levels + 1 - i)
        flows.append([nf.flows.GlowBlock(channels, hidden, split_mode="channel", scale=True)
                      for _ in range(steps)] + [nf.flows.Squeeze()])
        acted_on.append([channels, h // 2 ** (levels - i), w // 2 ** (levels - i)])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2**levels, w // 2**levels)
        q0.append(nf.distributions.GlowBase(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False), acted_on[::-1]


def dequantize(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Uniform dequantization of the top ``n_bits`` of uint8 pixels to [0, 1), as nfgen's."""
    q = torch.div(x, 2 ** (8 - n_bits), rounding_mode="floor").float()
    return (q + torch.rand_like(q)) / 2**n_bits


def normflows_model(cfg: Config, device: torch.device):
    glow = cfg.model.glow
    model, acted_on = build_normflows_glow(tuple(cfg.model.image_shape), glow.levels, glow.steps, glow.hidden)
    return model.to(device), acted_on


def normflows_train(args: argparse.Namespace, cfg: Config, device: torch.device) -> dict:
    model, acted_on = normflows_model(cfg, device)
    optimizer = plain_optimizer(model.parameters(), cfg)
    x = random_images(args.batch, tuple(cfg.model.image_shape))
    n_bits = cfg.model.n_bits
    reset_cuda_peak(device)
    base = memory_mark(device)
    with torch.no_grad():  # actnorm's data-dependent init on the first batch
        model.log_prob(dequantize(x.to(device), n_bits), None)
    model.train()
    last = []

    kld = torch.compile(model.forward_kld) if args.compile_normflows else model.forward_kld

    def step() -> None:  # the training step of normflows' Glow example
        optimizer.zero_grad(set_to_none=True)
        loss = kld(dequantize(x.to(device, non_blocking=True), n_bits))
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            optimizer.step()
        last.append((loss.item(), finite))

    timing = measure(step, args.batch, args, device)
    peak = memory_mark(device)
    u = dequantize(x.to(device), n_bits)
    saved = saved_activation_bytes(lambda: model.forward_kld(u), model)
    return {**timing, "base": base, "peak": peak, "params": n_params(model), "saved_mib": saved / MiB,
            "forward_flops_per_image": flops_per_image(lambda: model.forward_kld(u), args.batch),
            "step_flops_per_image": step_flops_per_image(lambda: model.forward_kld(u).backward(), args.batch),
            "level_shapes": acted_on, "last_loss": last[-1][0], "updates_skipped": sum(not f for _, f in last)}


def normflows_sample(args: argparse.Namespace, cfg: Config, device: torch.device) -> dict:
    model, _ = normflows_model(cfg, device)
    x = random_images(min(args.batch, 8), tuple(cfg.model.image_shape))
    with torch.no_grad():  # initialise actnorm from data, not from the first sampling call
        model.log_prob(dequantize(x.to(device), cfg.model.n_bits), None)
    model.eval()
    temperature = None if args.temperature == 1.0 else args.temperature

    def sample() -> None:
        with torch.no_grad():
            model.sample(args.batch, temperature=temperature)

    reset_cuda_peak(device)
    base = memory_mark(device)
    timing = measure(sample, args.batch, args, device)
    peak = memory_mark(device)
    return {**timing, "base": base, "peak": peak, "flops_per_image": flops_per_image(sample, args.batch)}


RUNNERS = {"nfgen-train": nfgen_train, "nfgen-sample": nfgen_sample,
           "normflows-train": normflows_train, "normflows-sample": normflows_sample}


def run_phase(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    cfg = load(args)
    torch.manual_seed(cfg.train.seed)
    return RUNNERS[args.phase](args, cfg, pick_device(args.device))


# ------------------------------------------------------------------ the parent process
def spawn(args: argparse.Namespace, phase: str) -> dict:
    """Run one phase in a fresh interpreter, so its peak memory is its own."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--config", str(args.config),
            "--batch", str(args.batch), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
            "--min-time", str(args.min_time), "--device", args.device, "--threads", str(args.threads),
            "--temperature", str(args.temperature)]
    argv += [f"--set={s}" for s in args.set]
    if args.compile_normflows:
        argv.append("--compile-normflows")
    if args.profile:
        argv.append("--profile")
    if args.image_size:
        argv += ["--image-size", str(args.image_size)]
    print(f"  {phase} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode or not lines:
        raise SystemExit(f"bench: phase {phase} failed (exit code {proc.returncode}); its error is above")
    return json.loads(lines[-1][len(MARK):])


def run_rounds(args: argparse.Namespace, phases: list[str]) -> dict[str, dict]:
    """Every phase ``--rounds`` times, the libraries alternating, so a machine whose speed drifts
    during the run (frequency, neighbours) biases neither side; repeats are pooled."""
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for phase in phases:
            new = spawn(args, phase)
            old = results.get(phase)
            if old is not None:
                rates = old["images_per_s_repeats"] + new["images_per_s_repeats"]
                images = new["s_per_call"] * new["images_per_s"]
                others = [o for o in (old["other_processes_cores"], new["other_processes_cores"]) if o is not None]
                new = {**new, "images_per_s_repeats": rates, "images_per_s": statistics.median(rates),
                       "s_per_call": images / statistics.median(rates),
                       "other_processes_cores": max(others) if others else None,
                       "peak": {k: max(old["peak"][k], v) for k, v in new["peak"].items()}}
            results[phase] = new
    return results


def summarize(train: dict, sample: dict, mem_kind: str) -> dict:
    key = "cuda_mib" if mem_kind == "cuda_allocated" else "rss_mib"
    return {
        "params": train["params"],
        "forward_flops_per_image": train["forward_flops_per_image"],
        "train_step_flops_per_image": train["step_flops_per_image"],
        "sample_flops_per_image": sample["flops_per_image"],
        "train_images_per_s": train["images_per_s"],
        "train_images_per_s_repeats": train["images_per_s_repeats"],
        "train_s_per_step": train["s_per_call"],
        "sample_images_per_s": sample["images_per_s"],
        "sample_images_per_s_repeats": sample["images_per_s_repeats"],
        "mem_kind": mem_kind,
        "train_peak_mem_mib": train["peak"][key],
        "train_base_mem_mib": train["base"][key],
        "train_mem_delta_mib": train["peak"][key] - train["base"][key],
        "train_saved_activations_mib": train["saved_mib"],
        "sample_peak_mem_mib": sample["peak"][key],
        "sample_base_mem_mib": sample["base"][key],
        "sample_mem_delta_mib": sample["peak"][key] - sample["base"][key],
        "train_peak_rss_mib": train["peak"]["rss_mib"],
        "sample_peak_rss_mib": sample["peak"]["rss_mib"],
        "train_other_processes_cores": train["other_processes_cores"],
        "sample_other_processes_cores": sample["other_processes_cores"],
        "level_shapes": train["level_shapes"],
        "last_train_loss": train["last_loss"],
        "train_updates_skipped": train["updates_skipped"],
    }


# (key, label, better, format) for the table and the ratios
ROWS = [
    ("train_images_per_s", "train images/s", "higher", "{:,.1f}"),
    ("sample_images_per_s", "sample images/s", "higher", "{:,.1f}"),
    ("train_peak_mem_mib", "train peak memory, MiB", "lower", "{:,.1f}"),
    ("train_base_mem_mib", "  train baseline (model built), MiB", "lower", "{:,.1f}"),
    ("train_mem_delta_mib", "  train peak - baseline, MiB", "lower", "{:,.1f}"),
    ("train_saved_activations_mib", "activations kept for backward, MiB", "lower", "{:,.1f}"),
    ("sample_peak_mem_mib", "sample peak memory, MiB", "lower", "{:,.1f}"),
    ("sample_mem_delta_mib", "  sample peak - baseline, MiB", "lower", "{:,.1f}"),
    ("params", "parameters", "", "{:,}"),
    ("forward_flops_per_image", "forward MFLOPs / image", "lower", "{:,.2f}"),
    ("sample_flops_per_image", "sample MFLOPs / image", "lower", "{:,.2f}"),
    ("train_step_flops_per_image", "train step MFLOPs / image (fwd + bwd)", "lower", "{:,.2f}"),
    ("train_fraction_of_matmul", "train FLOP/s as a fraction of matmul's", "higher", "{:.3f}"),
]


def table(report: dict) -> str:
    ours, theirs = report["nfgen"], report["normflows"]
    head = f"{'metric':<38} {'better':>6} {'nfgen':>14}"
    if theirs:
        head += f" {'normflows':>14} {'nfgen/normflows':>16}"
    lines = [head, "-" * len(head)]
    for key, label, better, fmt in ROWS:
        scale = 1e-6 if "flops" in key else 1
        line = f"{label:<38} {better:>6} {fmt.format(ours[key] * scale):>14}"
        if theirs:
            r = report["ratios"][key]
            line += f" {fmt.format(theirs[key] * scale):>14} {'-' if r is None else f'{r:.3f}':>16}"
        lines.append(line)
    return "\n".join(lines)


def describe_shape(report: dict) -> str:
    s = report["shape"]
    c, h, w = s["image_shape"]
    common = ("arch", "image_shape", "batch", "n_bits")
    section = ", ".join(f"{k} {v}" for k, v in s.items() if k not in common and v not in ({}, None))
    lines = [f"shape: {s['arch']}, input {c}x{h}x{w}, batch {s['batch']}, n_bits {s['n_bits']}; {section}"]
    for name in ("nfgen", "normflows"):
        if report[name]:
            acted = ", ".join("x".join(map(str, sh)) for sh in report[name]["level_shapes"])
            lines.append(f"  {name:<9} steps act on (per level, data side first): {acted}; "
                         f"{report[name]['params']:,} parameters")
    return "\n".join(lines)


def busy_warning(report: dict, threads: int) -> str:
    """Name the phases that shared the CPU with other processes, or say the repeats disagree."""
    notes = []
    for name, r in ((n, report[n]) for n in ("nfgen", "normflows") if report[n]):
        for phase in ("train", "sample"):
            others = r[f"{phase}_other_processes_cores"]
            reps = r[f"{phase}_images_per_s_repeats"]
            if others is not None and others > 0.25:
                notes.append(f"{name} {phase}: other processes kept {others:.2f} cores busy")
            if min(reps) > 0 and max(reps) / min(reps) > 1.5:
                notes.append(f"{name} {phase}: repeats differ {max(reps) / min(reps):.1f}x")
        if r["train_updates_skipped"]:
            notes.append(f"{name} train: {r['train_updates_skipped']} steps had a non-finite loss and "
                         "skipped their update")
    advice = (f"With {threads} threads on {os.cpu_count()} cores a busy machine slows small ops many times "
              "over: rerun when it is quiet, or with fewer --threads.")
    return f"WARNING: timings are unreliable ({'; '.join(notes)}). {advice}" if notes else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML path or the bare name of a shipped config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.glow.steps=32 (repeatable)")
    parser.add_argument("--batch", type=int, default=0, help="images per step (default: train.batch_size)")
    parser.add_argument("--image-size", type=int, default=0, help="square H = W (default: model.image_shape)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds each repeat runs at least")
    parser.add_argument("--device", default="", help="auto | cpu | cuda | cuda:N (default: train.device)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch.get_num_threads())")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--compare-normflows", action="store_true",
                        help="also run normflows' Glow at the same shape (pip install -e '.[bench]')")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every phase this many times, alternating libraries, and pool the repeats")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's top ops of nfgen's training step (stderr)")
    parser.add_argument("--compile-normflows", action="store_true",
                        help="torch.compile normflows' training forward too: a control for train.compile")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--phase", choices=list(RUNNERS), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1 or min(args.batch, args.image_size, args.warmup, args.threads) < 0:
        parser.error("--repeats and --rounds must be >= 1; --batch, --image-size, --warmup and --threads >= 0")

    if args.phase:
        print(MARK + json.dumps(run_phase(args)), flush=True)
        return 0

    cfg = load(args)  # fails here, before any process starts, on a bad config
    args.batch = args.batch or cfg.train.batch_size
    args.device = args.device or cfg.train.device
    args.threads = args.threads or torch.get_num_threads()
    device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench: --device {args.device} asked for CUDA, which is not available; use auto or cpu")
    if args.compare_normflows and importlib.util.find_spec("normflows") is None:
        raise SystemExit("bench: --compare-normflows needs normflows: pip install -e '.[bench]'")
    if args.compare_normflows and (cfg.model.arch != "glow" or cfg.model.glow.coupling != "affine"):
        raise SystemExit("bench: --compare-normflows compares Glow with affine couplings; "
                         f"this config has arch={cfg.model.arch}, coupling={cfg.model.options.coupling}")

    print(f"bench: {args.config}, device {device}, {args.threads} torch threads", file=sys.stderr)
    phases = ["nfgen-train", "normflows-train", "nfgen-sample", "normflows-sample"]
    results = run_rounds(args, phases if args.compare_normflows else phases[::2])
    mem_kind = "cuda_allocated" if device.type == "cuda" else "rss"
    m = cfg.model
    report = {
        "config": str(args.config),
        "overrides": args.set,
        "shape": {"arch": m.arch, **cfg.to_dict()["model"][m.arch],
                  "image_shape": list(m.image_shape), "batch": args.batch, "n_bits": m.n_bits},
        "nfgen": summarize(results["nfgen-train"], results["nfgen-sample"], mem_kind),
        "normflows": (summarize(results["normflows-train"], results["normflows-sample"], mem_kind)
                      if args.compare_normflows else None),
        "ratios": None,
        "device": (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"),
        "torch": torch.__version__,
        "threads": args.threads,
        "timing": {"warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds, "min_time_s": args.min_time,
                   "statistic": "median", "images": "random uint8, uniform over 0..255"},
        "train_flags": {"compile": cfg.train.compile, "amp": cfg.train.amp,
                        "memory_saving": cfg.train.memory_saving, "channels_last": cfg.train.channels_last},
        "normflows_compiled": args.compile_normflows,
        "loadavg_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    # The ceiling: a float32 matrix product on the same device and threads, measured in this run.
    report["matmul_gflops"] = matmul_flops_per_s(device, args.threads) / 1e9
    for name in ("nfgen", "normflows"):
        if report[name]:
            r = report[name]
            r["train_fraction_of_matmul"] = (r["train_images_per_s"] * r["train_step_flops_per_image"]
                                             / (report["matmul_gflops"] * 1e9))
    if args.compare_normflows:
        ours, theirs = report["nfgen"], report["normflows"]
        report["ratios"] = {key: ours[key] / theirs[key] if theirs[key] else None for key, *_ in ROWS}

    print(describe_shape(report))
    print(f"device {report['device']}, torch {report['torch']}, {args.threads} threads; "
          f"memory is {'CUDA max_memory_allocated' if mem_kind != 'rss' else 'peak RSS'} per phase process; "
          f"median of {args.rounds} x {args.repeats} repeats, each round after {args.warmup} warm-up calls; "
          f"float32 2048x2048 matmul here: {report['matmul_gflops']:.1f} GFLOP/s")
    print(table(report))
    warn = busy_warning(report, args.threads)
    if warn:
        print(warn)
    if args.compare_normflows:
        print(DIFFERENCES)
    if args.json_out:
        args.json_out.write_text(json.dumps(report) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors
