"""Write scikit-learn's handwritten digits as an image folder that nfgen can train on.

    python scripts/make_digits.py data/digits            # 8x8 PNGs
    python scripts/make_digits.py data/digits --size 32  # upscaled to 32x32
    python scripts/make_digits.py data/digits --classes  # one subfolder per digit, for labels

Writes ``<out>/train/0000.png`` ... ``1499.png`` and ``<out>/test/1500.png`` ... ``1796.png``:
a fixed split, the first 1500 of the 1797 images for training and the last 297 for testing.
Pixels are ``round(v * 255 / 16)`` of the data set's 0..16 grey levels. Then train with
``data.dataset: folder``, ``data.root: <out>`` and ``model.image_shape: [1, S, S]``.

``--classes`` puts each image in its digit's subfolder, ``<out>/train/3/0012.png`` (the same
split and file names), so a class-conditional model trains on it with ``data.labels: true``
and ``model.num_classes: 10``; every digit is in both splits.

Upscaling uses PIL's bicubic filter: smooth strokes that look like scanned handwriting, where
nearest-neighbour would give 8x8 blocks of identical pixels. Either way an upscaled digit is a
fixed function of its 64 pixels, so its bits/dim are not comparable with those of the 8x8 set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from nfgen.cli_support import script_main

N_TRAIN = 1500  # of 1797: the last 297 are the test split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to create, e.g. data/digits")
    parser.add_argument("--size", type=int, default=8, help="side in pixels (default 8: no resizing)")
    parser.add_argument("--classes", action="store_true", help="one subfolder per digit (<out>/train/<digit>/)")
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("--size must be >= 1")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("scikit-learn is needed: pip install scikit-learn", file=sys.stderr)
        return 1

    digits = load_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)  # [1797, 8, 8], 0..255
    counts = {"train": 0, "test": 0}
    for i, (pixels, digit) in enumerate(zip(images, digits.target)):
        split = "train" if i < N_TRAIN else "test"
        folder = args.out / split / str(digit) if args.classes else args.out / split
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(pixels)  # uint8 [8, 8] is mode "L"
        if args.size != 8:
            img = img.resize((args.size, args.size), Image.BICUBIC)
        img.save(folder / f"{i:04d}.png")
        counts[split] += 1
    where = " in one subfolder per digit" if args.classes else ""
    print(f"wrote {counts['train']} train and {counts['test']} test images "
          f"({args.size}x{args.size} grey PNGs) to {args.out}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors
