"""Train a small digit classifier on the 4,000 real training digits and save it as the TorchScript
feature extractor ``nfgen eval-fid --features`` takes.

    python scripts/make_mnist.py data                              # the 5,000 real digits
    python scripts/digit_features.py data --out digits.pt           # well under a minute on a CPU core
    nfgen eval-fid --ckpt runs/mnist_cpu/checkpoints/last.pt --ref test --features digits.pt

The module's ``forward`` maps float images in [0, 1], ``[B, 1, H, W]`` at the data's own size (the
config's ``model.image_shape``; images are read through nfgen's own data path, so they are exactly
what ``eval-fid`` hands it), to the 128 penultimate features; its exported ``logits`` method gives
the 10 class logits, from which ``eval-fid`` reports the classifier-read share. The test accuracy
on the 1,000 held-out digits is printed and written beside the module (``OUT.json``).

Why a digit classifier: Inception was trained on ImageNet photographs; on 28x28 grey digits its
features say little a reader of digits cares about, and its weights cannot be downloaded here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfgen.cli.support import script_main
from nfgen.config.schema import load_config
from nfgen.datasets.labels import take
from nfgen.datasets.splits import load_split


class DigitNet(nn.Module):
    """Three 3x3 conv layers (16, 32, 32 channels, two 2x2 max-pools), pooled to 4x4 whatever the
    image size, a 128-wide hidden layer (the features) and a linear read-out (the logits)."""

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * 16, 128), nn.ReLU())
        self.head = nn.Linear(128, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    @torch.jit.export
    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def shifted(x: Tensor, generator: torch.Generator, most: int = 2) -> Tensor:
    """Each image moved by up to ``most`` pixels each way (zero fill): the classifier should read
    a digit a little off-centre, as samples often are."""
    pad = F.pad(x, (most,) * 4)
    h, w = x.shape[-2:]
    dy, dx = torch.randint(0, 2 * most + 1, (2, len(x)), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # [B, 1, 1, W]
    return pad[torch.arange(len(x))[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="the folder scripts/make_mnist.py wrote (data.root)")
    ap.add_argument("--out", default="digits.pt", help="TorchScript module to write")
    ap.add_argument("--config", default="mnist_cpu.yaml", help="the config whose data path and image shape to use")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    # One thread: the net is small enough that threads mostly wait on each other (on a busy 2-core
    # machine two threads ran a step 9x slower than one).
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"data.root={args.root}", "data.download=false", "model.num_classes=10",
                                    "data.num_workers=0"])
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    x, y = take(train, range(len(train)))
    xt, yt = take(test, range(len(test)))
    x, xt = x.float() / 255, xt.float() / 255
    net = DigitNet(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    steps = args.epochs * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for _ in range(args.epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 63, 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(net.logits(shifted(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        acc = (net.logits(xt).argmax(1) == yt).double().mean().item()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch >= 2.10 calls TorchScript deprecated; it is what --features loads
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(net), str(out))
    info = {"test_accuracy": acc, "n_train": len(x), "n_test": len(xt), "epochs": args.epochs, "seed": args.seed,
            "train_seconds": round(seconds, 1), "image_shape": list(x.shape[1:]), "feature_dim": 128,
            "config": args.config}
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"test accuracy {acc:.4f} on {len(xt)} held-out digits ({len(x)} training digits, {args.epochs} epochs, "
          f"{seconds:.0f} s); wrote {out}")


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors
