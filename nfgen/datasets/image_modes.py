"""Every Pillow image mode to 8-bit grey ("L") or RGB, by one stated rule (``to_mode``).

Pillow's own ``convert("L")`` clips 16-bit images instead of scaling them (a 16-bit PNG becomes
mostly 255) and drops alpha, exposing whatever colour transparent pixels happen to hold; a
model would train on those wrong images without any error.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes Pillow converts to RGB correctly: HSV and YCbCr by their formulas, RGBX by dropping the
# pad byte, CMYK by R = (255 - C)(255 - K) / 255 (no colour management: an ICC profile is ignored).
VIA_PILLOW = ("RGBX", "YCbCr", "HSV", "CMYK")
SUPPORTED = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", *VIA_PILLOW, *SIXTEEN_BIT, "I", "F")


class ModeError(ValueError):
    """An image whose pixels cannot be read as 8-bit grey or RGB without guessing."""


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` as an 8-bit ``mode`` ("L" or "RGB") image; raises ``ModeError`` for images that
    would need a guess. Decodes the whole image (so a corrupt file fails here).

    ======================================  ==================================================
    source mode                             rule
    ======================================  ==================================================
    1                                       black 0, white 255
    L, RGB                                  as they are
    P                                       through its palette
    RGBX, YCbCr, HSV, CMYK                  Pillow's conversion to RGB (CMYK: no ICC profile)
    I;16, I;16L, I;16B, I;16N (16-bit)      round(v * 255 / 65535)
    I (32-bit integer)                      as 16-bit if every value is in 0..65535, else refused
    F (32-bit float)                        round(v * 255) if every value is in [0, 1], else
                                            refused (NaN and infinities too)
    LA, RGBA, PA; 1, L, P, RGB, I, 16-bit   composited over black: round(c * alpha / 255);
    with a transparent colour (PNG tRNS)    a transparent colour is alpha 0, others alpha 255
    La, RGBa (alpha premultiplied)          alpha dropped (they already are over black)
    LAB and anything else                   refused
    ======================================  ==================================================

    Then grey becomes RGB by copying it into R, G and B, and RGB becomes grey by ITU-R 601-2
    luma, L = (299 R + 587 G + 114 B) / 1000 (Pillow's ``convert("L")``). Rounding is half up.
    A multi-frame image (GIF, TIFF) gives its first frame.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    colour, alpha = _colour_and_alpha(img)
    if alpha is not None:
        # Transparent pixels hold arbitrary colours (often left over from editing): only the
        # composite is the image a viewer shows. (c * a + 127) // 255 is round(c * a / 255): the
        # quotient is never exactly half an integer, since 255 is odd.
        weight = alpha[..., None] if colour.ndim == 3 else alpha
        colour = ((colour.astype(np.uint32) * weight + 127) // 255).astype(np.uint8)
    out = Image.fromarray(colour, "RGB" if colour.ndim == 3 else "L")
    return out if out.mode == mode else out.convert(mode)


def _colour_and_alpha(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 colour ``[H, W]`` or ``[H, W, 3]`` and alpha ``[H, W]`` (None when opaque)."""
    m = img.mode
    if m in SIXTEEN_BIT or m == "I":
        values = np.asarray(img).astype(np.int64)
        if m == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ModeError(
                f"32-bit integer pixels span {values.min()}..{values.max()}, outside 16 bits' "
                f"0..65535, so their scale is unknown: save the image as 8- or 16-bit"
            )
        # (v + 128) // 257 is round(v * 255 / 65535) = round(v / 257), never a tie (257 is odd).
        grey = ((values + 128) // 257).astype(np.uint8)
        return grey, _transparent_colour(img, values)
    if m == "F":
        values = np.asarray(img, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ModeError(
                f"32-bit float pixels span {np.nanmin(values):g}..{np.nanmax(values):g} (or are not "
                f"finite), outside [0, 1], so their scale is unknown: save the image as 8- or 16-bit"
            )
        return np.floor(values * 255 + 0.5).astype(np.uint8), None
    if m in ("La", "RGBa"):
        return np.asarray(img)[..., :-1].squeeze(-1) if m == "La" else np.asarray(img)[..., :3], None
    if m == "1":
        grey = np.asarray(img.convert("L"))
        return grey, _transparent_colour(img, grey)  # Pillow gives its tRNS as 0 or 255
    if m in ("P", "PA"):
        # A palette may give colours or greys; its transparency (tRNS, or PA's band) becomes alpha.
        return _colour_and_alpha(img.convert("RGBA" if m == "PA" or "transparency" in img.info else "RGB"))
    if m in ("LA", "RGBA"):
        pixels = np.asarray(img)
        return (pixels[..., 0] if m == "LA" else pixels[..., :3]), pixels[..., -1]
    if m in ("L", "RGB"):
        pixels = np.asarray(img)
        return pixels, _transparent_colour(img, pixels)
    if m in VIA_PILLOW:
        return np.asarray(img.convert("RGB")), None
    raise ModeError(f"image mode {m} is not supported: save the image as 8-bit grey or RGB")


def _transparent_colour(img: Image.Image, pixels: np.ndarray) -> np.ndarray | None:
    """Alpha 0 where ``pixels`` equal the image's one transparent colour (PNG's tRNS), else 255."""
    t = img.info.get("transparency")
    if t is None or isinstance(t, bytes):  # bytes: a palette's alphas, used by P only
        return None
    key = np.asarray(t, dtype=pixels.dtype)
    match = (pixels == key).all(axis=-1) if pixels.ndim == 3 else pixels == key
    return np.where(match, 0, 255).astype(np.uint32)
