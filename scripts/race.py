"""A fair race: test likelihood against wall-clock time, nfgen configs beside normflows' Glow.

    nfgen data mnist data                                  # once: 4,000 / 1,000 real MNIST digits
    python scripts/race.py --budget 10m --data data --normflows \\
        --config glow_mnist.yaml --set model.glow.steps=8 --set model.glow.hidden=128 \\
        --config realnvp_mnist.yaml --json race.json

Each contender trains for the same wall-clock ``--budget`` on the same digits, in its own process
of this script (the hidden ``--worker`` flag), one after the other, so none shares the CPU with
another. The budget is split into ``--points`` equal shares; after each share the contender's
test bits per *real* pixel are measured on all 1,000 test digits: nats per image / (784 ln 2),
so a model of MNIST zero-padded to 32x32 is charged for its padding and compares with one at
28x28. At the end, 1,000 samples at T=1 and at T=0.7 are drawn and those with a non-finite pixel
counted; ``--samples DIR`` also writes the T=1 samples as 28x28 PNGs (a folder per contender), so
every contender, normflows' too, can be scored by ``nfgen eval-fid --gen``.

- nfgen contender (``--config``, repeatable; each ``--set`` applies to the ``--config`` before
  it): the real trainer, one job per share (``train.max_time`` = the share, then ``--resume``
  with a new share: a job's budget is its own), each ending with the trainer's final evaluation
  (the EMA weights if the config has them) and ``last.pt``. Exact resume makes the chain train
  what one job would. The race sets ``data.*`` to the MNIST files of ``--data`` (no download,
  no loader workers), ``train.device``, ``train.seed``, moves periodic evaluation, sample grids
  and checkpoints out of the way (every 10^9 steps), so both contenders evaluate at the same
  shares, and shrinks the trainer's sample grids to 4 images at T=1; the x-axis is
  ``Progress.train_seconds``.
- normflows contender (``--normflows``, ``pip install -e '.[bench]'``): its Glow example's model
  (``scripts/bench.py``'s ``build_normflows_glow``) at L=3, K=8, hidden 128 on MNIST zero-padded
  to 1x32x32, batch 64, Adam at 1e-3, uniform dequantization, its example's step (skip a
  non-finite loss), under the same stop rule (``nfgen.training.budget``: each share ends with its
  evaluation inside it, the evaluation's time measured once up front).

A contender that diverges keeps its points up to then and is marked DIVERGED; one whose process
fails is marked FAILED (exit code) and the race goes on: the others' results are printed and
written (the race then exits 1).

What each pays inside its budget: both their training steps, their first batch's actnorm init
and the evaluations; nfgen also its per-job start (a timing of the final phase, the sample grids
its trainer writes and ``last.pt``). Process start, data loading and the final sampling are
outside it. Figures are only comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nfgen import load_config
from nfgen.cli.support import script_main
from nfgen.config.schema import Config, config_from_dict, parse_duration
from nfgen.datasets.splits import load_split
from nfgen.errors import ConfigError, DataError, DeviceError, DivergenceError, MissingExtraError, UserError
from nfgen.tasks.evaluate import check_likelihood
from nfgen.training.budget import Budget
from nfgen.training.checkpoint import load_checkpoint, model_from_checkpoint
from nfgen.training.run import train

MARK = "RACE_RESULT "  # prefixes the one stdout line a worker reports
REAL_PIXELS = 28 * 28  # MNIST's; padding to 32x32 adds none
NORMFLOWS = {"levels": 3, "steps": 8, "hidden": 128, "image_shape": (1, 32, 32), "batch": 64, "lr": 1e-3}
NEVER = 10**9  # a step count no race reaches
SAMPLES, TEMPERATURES = 1000, (1.0, 0.7)


def bits_per_real_pixel(nats_per_image: float) -> float:
    return nats_per_image / (REAL_PIXELS * math.log(2))


def draw(sample: Callable[[int], torch.Tensor], n: int = SAMPLES, chunk: int = 250) -> torch.Tensor:
    """``n`` continuous samples in [0, 1) scale, drawn ``chunk`` at a time."""
    return torch.cat([sample(min(chunk, n - start)).cpu() for start in range(0, n, chunk)])


def count_nonfinite(u: torch.Tensor) -> int:
    """Samples (rows) with any non-finite value."""
    return int((~torch.isfinite(u)).flatten(1).any(1).sum())


def write_samples(u: torch.Tensor, folder: Path) -> None:
    """The finite samples as 8-bit PNGs at the real digits' 28x28 (a zero-padded model's border
    cropped), quantized as nfgen's ``sample`` does: for ``nfgen eval-fid --gen`` (the non-finite
    ones are counted in the report, not written)."""
    from PIL import Image

    x = torch.floor(u[torch.isfinite(u).flatten(1).all(1)] * 256).clamp(0, 255).to(torch.uint8)
    m = (x.shape[-1] - 28) // 2
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(x[..., m:m + 28, m:m + 28]):
        Image.fromarray(image[0].numpy(), "L").save(folder / f"{i:04d}.png")


def sampled(spec: dict, draws: dict[float, Callable[[], torch.Tensor]]) -> dict[str, int]:
    """Non-finite samples per temperature; the T=1 draws written to ``--samples`` when given."""
    nonfinite = {}
    for t, sample in draws.items():
        u = sample()
        nonfinite[f"{t:g}"] = count_nonfinite(u)
        if t == 1 and spec.get("samples_dir"):
            write_samples(u, Path(spec["samples_dir"]))
    return nonfinite


def mnist_config(root: str) -> Config:
    return config_from_dict({"data": {"dataset": "mnist", "root": root, "download": False},
                             "model": {"image_shape": list(NORMFLOWS["image_shape"])}})


def mnist_tensors(root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The train and test digits, zero-padded to 1x32x32, as uint8 tensors (through nfgen's loader)."""
    cfg = mnist_config(root)
    return tuple(torch.stack([ds[i] for i in range(len(ds))]) for ds in (load_split(cfg, s) for s in ("train", "test")))


def race_sets(spec: dict) -> list[str]:
    """What the race fixes in an nfgen config (the contender's own ``--set`` come after)."""
    return [f"data.root={spec['data']}", "data.dataset=mnist", "data.download=false", "data.num_workers=0",
            f"train.device={spec['device']}", f"train.seed={spec['seed']}", "train.eval_batches=0",
            f"train.eval_every={NEVER}", f"train.sample_every={NEVER}", f"train.checkpoint_every={NEVER}",
            "train.sample_count=4", "train.sample_temperatures=[1.0]"]  # the race draws its own samples


# ------------------------------------------------------------------ the workers (one process each)
def nfgen_worker(spec: dict) -> dict:
    cfg = load_config(spec["config"], [*race_sets(spec), *spec["sets"]])
    check_likelihood(cfg)  # every nfgen contender's figures are bits per real pixel
    run_dir, share = Path(spec["run_dir"]), spec["budget"] / spec["points"]
    last = run_dir / "checkpoints" / "last.pt"
    points, diverged = [], None
    for k in range(spec["points"]):
        job = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_time=share))
        try:
            bpd = train(job, run_dir, resume=k > 0, overwrite=k == 0, progress=False)
        except DivergenceError as e:  # a result of the race, not a failure of it: its points so far
            diverged = str(e)
            break
        progress = load_checkpoint(last)["progress"]
        nats = bpd * math.prod(cfg.model.image_shape) * math.log(2)
        points.append({"seconds": progress["train_seconds"], "step": progress["step"],
                       "bits_per_real_pixel": bits_per_real_pixel(nats)})
        if progress["step"] >= cfg.train.max_steps:
            break
    if not last.is_file():  # diverged before its first checkpoint: nothing to sample
        return {"points": points, "params": None, "skipped_steps": None, "nonfinite_samples": None,
                "diverged": diverged}
    progress = load_checkpoint(last)["progress"]
    model, _, _ = model_from_checkpoint(last, device=torch.device(spec["device"]))  # the EMA, as evaluated
    def continuous(t: float) -> torch.Tensor:
        generator = torch.Generator(model._ref().device).manual_seed(spec["seed"])
        return draw(lambda n: model.sample_continuous(n, t, generator))

    nonfinite = sampled(spec, {t: lambda t=t: continuous(t) for t in TEMPERATURES})
    return {"points": points, "params": sum(p.numel() for p in model.parameters()),
            "skipped_steps": progress["bad_steps"], "nonfinite_samples": nonfinite, "diverged": diverged}


def normflows_worker(spec: dict) -> dict:
    from bench import build_normflows_glow, dequantize  # scripts/bench.py: the one normflows Glow

    device, seed, s = torch.device(spec["device"]), spec["seed"], NORMFLOWS
    torch.manual_seed(seed)
    train_x, test_x = mnist_tensors(spec["data"])
    model, _ = build_normflows_glow(s["image_shape"], s["levels"], s["steps"], s["hidden"])
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=s["lr"])
    dims, batch = math.prod(s["image_shape"]), s["batch"]
    order = torch.Generator().manual_seed(seed)

    def batches():
        while True:  # an epoch order per pass, the last partial batch dropped, as nfgen's trainer
            perm = torch.randperm(len(train_x), generator=order)
            for i in range(len(perm) // batch):
                yield train_x[perm[i * batch:(i + 1) * batch]].to(device)

    def nats(x: torch.Tensor) -> torch.Tensor:  # the one-draw uniform-dequantization bound, per image
        return -model.log_prob(dequantize(x.to(device), 8), None) + dims * math.log(256)

    def evaluate(max_batches: int = 0) -> float:
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed + 1)
            parts = [nats(test_x[i:i + batch]) for i in range(0, len(test_x), batch)][: max_batches or None]
        model.train()
        return torch.cat(parts).double().mean().item()

    data = batches()
    budget, points, steps, skipped, before = Budget(spec["budget"] / spec["points"]), [], 0, 0, 0.0
    budget.start()
    with torch.no_grad():  # actnorm's data-dependent init on the first batch, as its example does
        model.log_prob(dequantize(next(data), 8), None)
    start = time.monotonic()  # the evaluation's time, measured once up front (2 batches, scaled)
    evaluate(max_batches=2)
    budget.record("eval", (time.monotonic() - start) * math.ceil(len(test_x) / batch) / 2)
    for k in range(spec["points"]):
        if k:
            budget.start()  # a new share; the measured costs carry over
        while True:  # at least one step a share, then nfgen's rule, as nfgen's trainer does
            with budget.timed("step"):  # its example's training step
                optimizer.zero_grad(set_to_none=True)
                loss = model.forward_kld(dequantize(next(data), 8))
                if torch.isfinite(loss):
                    loss.backward()
                    optimizer.step()
                else:
                    skipped += 1
            steps += 1
            if not budget.allows_another_step([]):
                break
        with budget.timed("eval"):
            value = evaluate()
        before += budget.elapsed()
        points.append({"seconds": before, "step": steps, "bits_per_real_pixel": bits_per_real_pixel(value)})
    model.eval()
    def continuous(t: float) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return draw(lambda n: model.sample(n, temperature=None if t == 1 else t)[0])

    nonfinite = sampled(spec, {t: lambda t=t: continuous(t) for t in TEMPERATURES})
    return {"points": points, "params": sum(p.numel() for p in model.parameters()), "skipped_steps": skipped,
            "nonfinite_samples": nonfinite}


def run_worker(spec: dict) -> None:
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's lines; stdout carries the result
        result = (nfgen_worker if spec["kind"] == "nfgen" else normflows_worker)(spec)
    print(MARK + json.dumps(result), flush=True)


# ------------------------------------------------------------------ the parent process
class _Contender(argparse.Action):
    """``--config`` starts a contender; each ``--set`` after it belongs to it."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        contenders = list(getattr(namespace, self.dest) or [])  # not the shared default list
        if option_string == "--config":
            contenders.append({"kind": "nfgen", "config": value, "sets": []})
        elif not contenders:
            parser.error(f"--set {value} comes before any --config; put it after the config it changes")
        else:
            contenders[-1] = {**contenders[-1], "sets": [*contenders[-1]["sets"], value]}
        setattr(namespace, self.dest, contenders)


def label(c: dict) -> str:
    if c["kind"] == "normflows":
        s = NORMFLOWS
        return f"normflows Glow L={s['levels']} K={s['steps']} h={s['hidden']}"
    return " ".join([f"nfgen {Path(c['config']).name}", *(s for s in c["sets"])])


def spawn(spec: dict) -> dict:
    print(f"race: {label(spec)} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode or not lines:  # reported, and the race goes on: the others' results stand
        print(f"race: {label(spec)} failed (exit code {proc.returncode}); its error is above", file=sys.stderr)
        return {"contender": label(spec), "points": [], "params": None, "skipped_steps": None,
                "nonfinite_samples": None, "failed": f"exit code {proc.returncode}",
                "process_seconds": time.monotonic() - start}
    return {"contender": label(spec), **json.loads(lines[-1][len(MARK):]), "process_seconds": time.monotonic() - start}


def status(result: dict) -> str:
    """What a contender's row ends with: finished, diverged (its points up to then) or failed."""
    if result.get("failed"):
        return f"FAILED ({result['failed']})"
    if result.get("diverged"):
        return "DIVERGED (points until then)"
    return "finished"


def table(report: dict) -> str:
    n = report["points"]
    head = (f"{'contender':<44} {'params':>9} {'steps':>6} {'skip':>4} "
            + " ".join(f"{f'{(k + 1) / n:.0%} of budget':>18}" for k in range(n))
            + f" {'non-finite T=1':>14} {'T=0.7':>6}  status")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        cells = [f"{p['bits_per_real_pixel']:.4f} @{p['seconds']:.0f}s" for p in r["points"]]
        cells += ["-"] * (n - len(cells))
        nf = r["nonfinite_samples"] or {"1": "-", "0.7": "-"}
        params = "-" if r["params"] is None else f"{r['params']:,}"
        steps = r["points"][-1]["step"] if r["points"] else "-"
        skipped = "-" if r["skipped_steps"] is None else r["skipped_steps"]
        lines.append(f"{r['contender'][:44]:<44} {params:>9} {steps:>6} {skipped:>4} "
                     + " ".join(f"{c:>18}" for c in cells) + f" {nf['1']:>14} {nf['0.7']:>6}  {status(r)}")
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", help="wall-clock budget of each contender: seconds or 90s, 10m, 1h")
    parser.add_argument("--data", default="data", help="data.root holding MNIST/raw (nfgen data mnist DIR)")
    parser.add_argument("--config", action=_Contender, dest="contenders", default=[],
                        help="an nfgen config (path or shipped name), repeatable")
    parser.add_argument("--set", action=_Contender, dest="contenders", metavar="KEY=VALUE",
                        help="override for the --config before it (repeatable)")
    parser.add_argument("--normflows", action="store_true", help="also race normflows' Glow at its shape (L=3, K=8, h=128)")
    parser.add_argument("--points", type=int, default=4, help="evaluations, at equal shares of the budget")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N, for every contender")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per contender (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, help="keep nfgen's run folders here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--samples", type=Path, help="write each contender's 1,000 samples at T=1 here as 28x28 "
                                                     "PNGs, a folder per contender (for nfgen eval-fid --gen)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a child process: its spec as JSON
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0

    try:  # every input checked before the first contender starts
        if args.budget is None:
            raise ConfigError("give --budget (seconds, or e.g. 90s, 10m, 1h)")
        budget = parse_duration(args.budget, "--budget")
        if not 1 <= args.points <= 100 or args.threads < 0 or not 0 <= args.seed < 2**32:
            raise ConfigError("--points must be in 1..100, --threads >= 0, --seed in 0..2^32-1")
        if not args.contenders and not args.normflows:
            raise ConfigError("nothing to race: give --config FILE (repeatable) and/or --normflows")
        if args.normflows and importlib.util.find_spec("normflows") is None:
            raise MissingExtraError("--normflows needs normflows: pip install -e '.[bench]'")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceError(f"--device {args.device}: CUDA is not available")
        n_train = len(load_split(mnist_config(str(args.data)), "train"))  # the files are checked here
        n_test = len(load_split(mnist_config(str(args.data)), "test"))
        common = {"data": str(args.data), "budget": budget, "points": args.points, "device": args.device,
                  "threads": args.threads, "seed": args.seed}
        for c in args.contenders:
            cfg = load_config(c["config"], [*race_sets(common), *c["sets"]])
            load_split(cfg, "test")  # an image shape MNIST cannot give is refused now
            check_likelihood(cfg)  # a Gaussian-noise model's noisy NLL is no bits per real pixel
    except UserError as e:
        hint = f" (write them with: nfgen data mnist {args.data})" if isinstance(e, DataError) else ""
        print(f"race: error: {e}{hint}", file=sys.stderr)
        return e.exit_code

    contenders = [*args.contenders, *([{"kind": "normflows"}] if args.normflows else [])]
    with tempfile.TemporaryDirectory(prefix="race-") as tmp:
        runs = args.runs or Path(tmp)
        names = [f"{i}-{Path(c.get('config', 'normflows')).stem}" for i, c in enumerate(contenders)]
        results = [spawn({**common, **c, "run_dir": str(runs / name),
                          "samples_dir": args.samples and str(args.samples / name)})
                   for name, c in zip(names, contenders)]
    report = {"budget_s": budget, "points": args.points, "data": str(args.data), "train_digits": n_train,
              "test_digits": n_test, "results": results, "device": args.device, "threads": args.threads,
              "torch": torch.__version__, "machine": f"{platform.processor() or platform.machine()}, "
                                                     f"{os.cpu_count()} cores",
              "loadavg_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    print(f"race: {budget:g} s each on {args.device}; test bits per real pixel (nats / (784 ln 2)) on the "
          f"test digits @ training seconds; non-finite samples of {SAMPLES:,}")
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(r.get("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(script_main(main))
