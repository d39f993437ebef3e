"""An image's complexity: its length in bits when losslessly compressed by a general codec.

Serrà et al. (2020), "Input complexity and out-of-distribution detection with likelihood-based
generative models", subtract this length ``L(x)`` from a model's code length ``-log2 p(x)``:
a generic compressor is a crude universal model, so the difference measures how much better
(or worse) than generic the trained model explains ``x``, and an image no longer looks typical
merely because it is simple (a blank page, a smooth sky).

What is compressed is what the model assigns probability to: the image reduced to the model's
``n_bits`` (levels ``0..2**n_bits - 1``, stored in 8-bit samples). What is counted is the
codec's compressed payload only: the container's fixed bytes (PNG's signature, header and end
chunks, zlib's framing; WebP's RIFF header) say nothing about ``x`` and would add the same
constant to every image of a size, which at 8x8 is more than 8 bits/dim by itself.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def _png_payload(img: Image.Image) -> int:
    """Bytes of the DEFLATE stream in a maximally compressed PNG: its IDAT chunks' data, less
    zlib's 2-byte header and 4-byte checksum."""
    buf = io.BytesIO()
    # optimize: zlib level 9 and Pillow's search for the best settings (PNG's per-row filters).
    img.save(buf, "PNG", optimize=True, compress_level=9)
    data, pos, idat = buf.getvalue(), 8, 0  # 8: the PNG signature
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += length
        pos += 12 + length  # length, type, data, CRC
    return idat - 6


def _webp_payload(img: Image.Image) -> int:
    """Bytes of the lossless WebP (VP8L) bitstream at the slowest, smallest setting, less its
    5-byte signature and size header."""
    buf = io.BytesIO()
    img.save(buf, "WEBP", lossless=True, quality=100, method=6, exact=True)
    data, pos = buf.getvalue(), 12  # 12: "RIFF", size, "WEBP"
    while pos < len(data):
        kind, length = struct.unpack("<4sI", data[pos:pos + 8])
        if kind == b"VP8L":
            return length - 5
        pos += 8 + length + (length & 1)  # RIFF chunks are padded to even length
    raise ValueError("Pillow wrote a WebP without a lossless (VP8L) bitstream")


# Named lossless codecs: image -> compressed payload in bytes. PNG is Serrà et al.'s baseline;
# WebP's lossless mode (predictors, colour cache, entropy-coded residuals) is the strongest
# lossless codec Pillow ships, the closest to their best one (FLIF).
CODECS: dict[str, Callable[[Image.Image], int]] = {"png": _png_payload, "webp": _webp_payload}


def compressed_bits(images: torch.Tensor, n_bits: int, codec: str = "png") -> np.ndarray:
    """Per-image ``L(x)`` in bits: the length of ``codec``'s payload for each uint8 image of
    ``images`` ``[B, C, H, W]`` (C = 1 or 3) reduced to ``n_bits`` levels."""
    import torch  # here, not at the top: the command line lists CODECS without importing torch

    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; use one of: {', '.join(CODECS)}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 [B, 1 or 3, H, W], got {images.dtype} {list(images.shape)}")
    levels = (images.cpu() >> (8 - n_bits)).permute(0, 2, 3, 1).numpy()  # the model's floor(x / 2**(8-n))
    compress = CODECS[codec]
    mode = "L" if levels.shape[-1] == 1 else "RGB"
    return np.array([8 * compress(Image.fromarray(np.ascontiguousarray(im.squeeze(-1) if mode == "L" else im), mode))
                     for im in levels], dtype=np.float64)
