"""Profile nfgen's training step with torch.profiler: the top ops by self CPU time, eager and compiled.

    python scripts/profile_step.py --config glow_mnist.yaml --set model.glow.steps=8 --set model.glow.hidden=128 \\
        --batch 64
    python scripts/profile_step.py --config glow_mnist.yaml --mode compiled --rows 30

The step is the trainer's own (``nfgen.training.step.train_step``: forward, backward, gradient
clipping, the optimizer update) on random uint8 images of the config's shape, after actnorm's
data-dependent init and ``--warmup`` untimed steps (which, compiled, include the compilation).
Each mode prints ``torch.profiler``'s table sorted by self CPU time over ``--steps`` steps, then
one summary line: the share of self CPU time spent in convolutions and matrix products (what
the step is for) against everything else (elementwise passes, copies, layout changes, the
optimizer, Python and dispatch overhead). Compiled, Inductor's fused kernels appear as its
graph calls (``CompiledFunction``, ``Torch-Compiled Region``) and the aten ops that remain.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from nfgen import build_model, load_config
from nfgen.cli.support import script_main
from nfgen.model.image_flow import initialize
from nfgen.training.step import make_forward, make_optimizer, train_step

# Self-CPU rows that are the step's real work: convolutions (oneDNN's and aten's) and matrix
# products, forward and backward.
COMPUTE = ("conv", "mkldnn", "addmm", "mm", "bmm", "matmul", "linear")


def is_compute(name: str) -> bool:
    return any(key in name.lower() for key in COMPUTE)


def profile(mode: str, args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.set)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=mode == "compiled"))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    optimizer = make_optimizer(model.parameters(), dataclasses.replace(cfg.train, lr=cfg.train.lr / 100))
    batch = args.batch or cfg.train.batch_size
    x = torch.randint(0, 256, (batch, *cfg.model.image_shape), dtype=torch.uint8)
    initialize(model, x)
    forward = make_forward(model, cfg.train)
    device = torch.device("cpu")

    def step() -> None:
        train_step(forward, model, optimizer, [(x, None)], cfg.train, device)

    for _ in range(args.warmup):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    print(f"== {mode}: {args.steps} training steps, batch {batch}, {torch.get_num_threads()} threads ==")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in events)
    compute = sum(e.self_cpu_time_total for e in events if is_compute(e.key))
    calls = sum(e.count for e in events)
    print(f"{mode}: {total / args.steps / 1e3:.1f} ms self CPU per step; convolution and matmul "
          f"{compute / total:.1%}, everything else {1 - compute / total:.1%}; "
          f"{calls / args.steps:.0f} profiled op calls per step\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="glow_mnist.yaml", help="YAML path or a shipped config's name")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--batch", type=int, default=0, help="images per step (default: train.batch_size)")
    parser.add_argument("--mode", choices=["eager", "compiled", "both"], default="both")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation included)")
    parser.add_argument("--rows", type=int, default=25, help="rows of the table")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for mode in (["eager", "compiled"] if args.mode == "both" else [args.mode]):
        profile(mode, args)
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors
