"""Time the planar and radial layers' inverse against their forward, without gradients.

    python scripts/bench_vector_inverse.py [--points 65536] [--layers 32] [--repeats 5]

A stack of ``--layers`` layers maps ``--points`` float32 2-D points. The planar inverse solves
one scalar equation per point and layer by bisection (``Planar.bisect_steps``) and a Newton
step; the radial inverse is closed-form. Times are the best of ``--repeats`` after a warm-up
(the least disturbed figure on a shared machine); only the ratios, measured in the same run,
mean anything across machines. One thread.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from nfgen.cli.support import script_main
from nfgen.flows.base import Sequential
from nfgen.flows.vector import Planar, Radial


def best(fn, arg: torch.Tensor, repeats: int) -> float:
    fn(arg)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.points, 2)
    for name, layer in (("planar", Planar), ("radial", Radial)):
        stack = Sequential(*[layer(2) for _ in range(args.layers)])
        with torch.no_grad():
            z = stack(x)[0]
            fwd = best(stack, x, args.repeats)
            inv = best(stack.inverse, z, args.repeats)
        print(f"{name}: forward {fwd * 1e3:.1f} ms, inverse {inv * 1e3:.1f} ms "
              f"({inv / fwd:.1f}x) for {args.points} points through {args.layers} layers")


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors
