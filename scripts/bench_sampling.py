"""Sampling time of a TarFlow model with and without its key/value cache, and how it grows with
the number of tokens.

    python scripts/bench_sampling.py --ckpt runs/tarflow_digits/checkpoints/last.pt --n 64
    python scripts/bench_sampling.py --config tarflow_digits.yaml --sizes 8 16 32

With ``--ckpt`` it times a trained model's sampling both ways and counts the pixels where the two
differ (none: the cache changes the cost, not the numbers). With ``--config`` and ``--sizes`` it builds the
config's model (untrained) at each square image size, so the number of tokens grows 4x per
doubling, and times the KV-cached and the recomputing inverse: the cache's time should grow about
linearly in the tokens (its attention reads are quadratic but small), recomputing every prefix
grows quadratically. Times are medians of ``--repeats`` runs; compare them within one run only.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nfgen.cli.support import script_main
from nfgen.config.schema import load_config  # noqa: E402
from nfgen.flows.tarflow import set_kv_cache  # noqa: E402
from nfgen.model.image_flow import ImageFlow, build_model  # noqa: E402
from nfgen.training.checkpoint import model_from_checkpoint  # noqa: E402


def time_sampling(model: ImageFlow, kv_cache: bool, n: int, repeats: int) -> tuple[float, torch.Tensor]:
    set_kv_cache(model, kv_cache)
    times, images = [], None
    for r in range(repeats):
        start = time.perf_counter()
        images = model.sample(n, 1.0, torch.Generator().manual_seed(r))
        times.append(time.perf_counter() - start)
    return statistics.median(times), images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="a trained TarFlow checkpoint")
    ap.add_argument("--config", help="a TarFlow config (untrained model)")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. model.tarflow.width=128")
    ap.add_argument("--sizes", type=int, nargs="*", default=[], help="square image sizes for the scaling table")
    ap.add_argument("--n", type=int, default=64, help="images per sampling call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    if args.ckpt:
        model = model_from_checkpoint(args.ckpt)[0]
        cached, ref = time_sampling(model, True, args.n, args.repeats)
        recomputed, images = time_sampling(model, False, args.n, args.repeats)
        print(f"{args.ckpt}: {args.n} images, median of {args.repeats}")
        print(f"kv_cache {cached:.3f} s, recompute {recomputed:.3f} s ({recomputed / cached:.1f}x); "
              f"pixels that differ: {(images != ref).sum().item()}")
    if args.config and args.sizes:
        cfg = load_config(args.config, args.set)
        print(f"{args.config}: {args.n} images per call, untrained, median of {args.repeats}")
        print(f"{'size':>5} {'tokens':>6} {'kv_cache s':>10} {'recompute s':>11} {'ratio':>6}")
        for size in args.sizes:
            shape = (cfg.model.image_shape[0], size, size)
            model = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_shape=shape))).eval()
            tokens = (size // cfg.model.tarflow.patch) ** 2
            cached = time_sampling(model, True, args.n, args.repeats)[0]
            recomputed = time_sampling(model, False, args.n, args.repeats)[0]
            print(f"{size:>5} {tokens:>6} {cached:10.3f} {recomputed:11.3f} {recomputed / cached:5.1f}x")


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors
