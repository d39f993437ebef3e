"""Time each coupling transform's forward+backward, both directions, relative to affine.

    python scripts/bench_transforms.py [--shape 16 6 16 16] [--repeats 5] [--threads 1]

Every transform maps a float32 tensor of ``--shape`` with random raw parameters (normal, scale
1), then ``(y.sum() + logdet.sum()).backward()`` reaches the input and the parameters. The
same is timed for ``inverse``. Times are the best of ``--repeats`` after one warm-up (the
minimum is the figure least moved by other processes on a shared machine); only the ratios to
affine, measured in the same run, mean anything across machines. One thread by default.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from nfgen.cli.support import script_main
from nfgen.flows.transforms import make_transform

CASES = [
    ("affine", {}),
    ("spline", {"bins": 8}),
    ("logistic_mixture", {"components": 4}),
    ("logistic_mixture", {"components": 32}),
]


def time_direction(transform: torch.nn.Module, direction: str, shape: list[int], repeats: int) -> float:
    """Best seconds of one forward+backward of ``transform.<direction>``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    params = torch.randn(*shape, transform.params_per_dim, generator=gen)
    fn = transform.forward if direction == "forward" else transform.inverse
    times = []
    for i in range(repeats + 1):
        xi, pi = x.clone().requires_grad_(True), params.clone().requires_grad_(True)
        start = time.perf_counter()
        out, logdet = fn(xi, pi)
        (out.sum() + logdet.sum()).backward()
        if i:  # the first call warms allocator and kernels up
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[16, 6, 16, 16])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, options in CASES:
        transform = make_transform(name, **options)
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        rows.append((label, {d: time_direction(transform, d, args.shape, args.repeats) for d in ("forward", "inverse")}))
    base = rows[0][1]
    print(f"shape {args.shape}, float32, {args.threads} thread(s), best of {args.repeats}; forward+backward")
    print(f"{'transform':<32}{'forward ms':>12}{'x affine':>10}{'inverse ms':>12}{'x affine':>10}")
    for label, t in rows:
        print(f"{label:<32}{1e3 * t['forward']:>12.2f}{t['forward'] / base['forward']:>10.1f}"
              f"{1e3 * t['inverse']:>12.2f}{t['inverse'] / base['inverse']:>10.1f}")


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors
