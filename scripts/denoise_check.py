"""How much one Tweedie step denoises, for a model trained with Gaussian noise (generation mode).

    python scripts/denoise_check.py runs/NAME/checkpoints/best.pt [--split test] [--seed 0]

Adds the model's own noise (``dequantization.sigma``, on the [0, 1) image scale) to the bin
centres of every image of the split, applies ``ImageFlow.denoise`` (``u + sigma^2 grad log p(u)``)
and prints: the root-mean-square distance to the clean images before and after the step (in
grey levels of 0..255), the share of images whose model density rose, and the share of pixels
that quantise back to their own level before and after. A model that has learned the noisy
images' density removes part of the noise; Tweedie's formula is the posterior mean only as
far as the model's density is the true one.
"""

from __future__ import annotations

import argparse
import sys

import torch

from nfgen.cli.support import script_main
from nfgen.datasets.splits import load_split
from nfgen.training.checkpoint import model_from_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="checkpoint of a model trained with dequantization.kind: gaussian")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    model, cfg, _ = model_from_checkpoint(args.ckpt)
    sigma = model.noise_sigma
    if sigma is None:
        print(f"{args.ckpt}: trained without Gaussian noise (dequantization.kind {cfg.dequantization.kind}); "
              "nothing to denoise", file=sys.stderr)
        return 1
    data = load_split(cfg, args.split)
    torch.manual_seed(args.seed)
    sq_before = sq_after = rose = same_before = same_after = n_images = n_pixels = 0.0
    for start in range(0, len(data), args.batch):
        x = model._reduce(torch.stack([data[i] for i in range(start, min(start + args.batch, len(data)))]))
        clean = (x + 0.5) / model.levels
        u = clean + sigma * torch.randn_like(clean)
        d = model.denoise(u)
        with torch.no_grad():
            rose += (model.log_density(d) > model.log_density(u)).sum().item()
        sq_before += ((u - clean) ** 2).sum().item()
        sq_after += ((d - clean) ** 2).sum().item()
        same_before += (torch.floor(u * model.levels).clamp(0, model.levels - 1) == x).sum().item()
        same_after += (torch.floor(d * model.levels).clamp(0, model.levels - 1) == x).sum().item()
        n_images += x.shape[0]
        n_pixels += x.numel()
    rms = lambda s: 255 * (s / n_pixels) ** 0.5  # noqa: E731  (grey levels of 0..255)
    print(f"{args.split}: {int(n_images)} images, sigma {sigma:g} ({255 * sigma:.2f} grey levels)")
    print(f"rms distance to the clean images: noisy {rms(sq_before):.3f} -> denoised {rms(sq_after):.3f} grey levels")
    print(f"model density rose for {rose / n_images:.1%} of the images")
    print(f"pixels back on their own level: noisy {same_before / n_pixels:.1%} -> denoised {same_after / n_pixels:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors
