"""A photo or drawing of a digit -> the model's input: float32 [28, 28, 1] in [0, 1], MNIST layout.

Steps (as MNIST was built): grayscale; light-on-dark polarity (a light background is inverted);
background removed and contrast stretched; cropped to the ink's bounding box; resized with its
aspect ratio kept so the longer side is 20 px; centred in a 28x28 frame.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import InvalidInput, NoDigitFound, PayloadTooLarge

FRAME = 28
BOX = 20  # MNIST's digit box; the trainer lays the bundled digits out the same way (trainer/data.py)
# Pixels brighter than this fraction of the ink's peak count as ink when finding the bounding box;
# low enough to keep thin strokes, high enough to ignore JPEG ringing and paper texture.
INK_THRESHOLD = 0.2
# Below this difference from the background (on a 0-1 scale), a picture has no ink to read.
MIN_CONTRAST = 0.04
# Larger pictures are scaled down to at most this many pixels a side before any float work: the digit
# ends up 20 px tall, and at full size a 4000x4000 RGBA PNG of 124 KB took 240 MB of working memory.
# JPEGs are decoded at the reduced scale directly (libjpeg's DCT scaling).
WORK_SIDE = 1024


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes -> a loaded Pillow image; InvalidInput if not an image, PayloadTooLarge if too many pixels."""
    if not data:
        raise InvalidInput("empty image: send a PNG or JPEG as the body or as the multipart field 'file'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # PNG and JPEG only, as documented: every other decoder Pillow has (some call out to external
            # programs, EPS to Ghostscript) stays out of reach of an upload.
            img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
            width, height = img.size
            if width * height > max_pixels:
                raise PayloadTooLarge(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
            if img.format == "JPEG" and max(width, height) > WORK_SIDE:
                img.draft(None, (WORK_SIDE, WORK_SIDE))  # the smallest DCT scale still at least this large
            img.load()
    except PayloadTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image too large to decode: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidInput("cannot decode image: not a PNG or JPEG (or the file is corrupt)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"cannot decode image (send PNG or JPEG): {exc}") from None
    return img


def _at_working_size(img: Image.Image) -> Image.Image:
    """At most WORK_SIDE pixels a side (box average), before anything else copies the full-size picture;
    modes Pillow cannot reduce are first converted to the nearest one it can, keeping alpha and depth."""
    factor = -(-max(img.size) // WORK_SIDE)  # ceil
    if factor == 1:
        return img
    if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        if img.mode == "PA" or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
        elif img.mode.startswith("I;"):
            img = img.convert("I")
        else:
            img = img.convert("L" if img.mode == "1" else "RGB")
    return img.reduce(factor)


def _grayscale(img: Image.Image) -> np.ndarray:
    """Float [H, W] in [0, 1]. A transparent drawing is read from its alpha channel: ink is opaque."""
    ImageOps.exif_transpose(img, in_place=True)  # (not in place, it copies every image, rotated or not)
    img = _at_working_size(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        if alpha.min() < 0.99:
            return alpha
        img = rgba.convert("RGB")
    gray = img.convert("F") if img.mode in ("I", "I;16", "F") else img.convert("L")
    arr = np.asarray(gray, dtype=np.float32)
    if img.mode in ("I", "I;16"):
        peak = float(arr.max()) or 1.0
        return arr / (65535.0 if peak > 255 else 255.0)
    return arr / 255.0 if gray.mode == "L" else arr


def to_mnist(img: Image.Image) -> np.ndarray:
    """Decoded image -> float32 [28, 28, 1] in [0, 1], digit light on dark, MNIST-centred."""
    arr = _grayscale(img)
    # Polarity from the border: the frame of a digit picture is background. Median resists a stroke
    # that touches the edge.
    border = np.concatenate([arr[0, :], arr[-1, :], arr[:, 0], arr[:, -1]])
    background = float(np.median(border))
    # The ink is whichever side of the background reaches further: dark ink on dark-grey paper is
    # still dark ink, though the paper is darker than mid-grey.
    if background - float(arr.min()) > float(arr.max()) - background:
        arr = 1.0 - arr
        background = 1.0 - background
    # Remove the background level and stretch the ink to full scale (grey paper, faint pencil).
    arr = np.clip(arr - background, 0.0, None)
    peak = float(arr.max())
    if peak < MIN_CONTRAST:
        # Blank (one colour, a 1x1 image) or nothing but noise: the model would still name a digit.
        raise NoDigitFound("no digit found: nothing in the picture stands out from its background")
    arr = arr / peak
    rows = np.flatnonzero((arr > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((arr > INK_THRESHOLD).any(axis=0))
    arr = arr[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = arr.shape
    scale = BOX / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    # Float-mode resize keeps full precision; the box filter averages (anti-aliases) when shrinking.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(arr).resize((new_w, new_h), resample), dtype=np.float32)
    out = np.zeros((FRAME, FRAME), dtype=np.float32)
    top, left = (FRAME - new_h) // 2, (FRAME - new_w) // 2
    out[top : top + new_h, left : left + new_w] = small
    return np.clip(out, 0.0, 1.0)[:, :, None]


def preprocess(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes of a PNG/JPEG -> float32 [1, 28, 28, 1] ready to predict (blocking: run off the event loop)."""
    return to_mnist(decode(data, max_pixels))[None, ...]
