"""Image -> 28x28x1 MNIST-layout conversion used by /v1/classify."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gateway.errors import InvalidInput, NoDigitFound, PayloadTooLarge
from gateway.imaging import preprocess


def encode(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def bar_picture(dark_on_light: bool) -> np.ndarray:
    canvas = np.zeros((200, 200), np.uint8)
    canvas[10:70, 20:50] = 255  # 60 tall, 30 wide, near the top-left corner
    return 255 - canvas if dark_on_light else canvas


def content_box(x: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero((x > 0.5).any(axis=1))
    cols = np.flatnonzero((x > 0.5).any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


def test_content_is_cropped_scaled_to_20_and_centred() -> None:
    x = preprocess(encode(bar_picture(False)), 10**7)
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert content_box(x[0, :, :, 0]) == (4, 23, 9, 18)  # 20 tall, 10 wide, centred


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_dark_on_light_becomes_light_on_dark(fmt: str) -> None:
    light_bg = preprocess(encode(bar_picture(True), fmt), 10**7)
    dark_bg = preprocess(encode(bar_picture(False), fmt), 10**7)
    assert np.abs(light_bg - dark_bg).max() < 0.05
    assert light_bg[0, 0, 0, 0] == 0.0 and light_bg[0, 14, 14, 0] > 0.9


def test_colour_and_transparent_drawings() -> None:
    ink = bar_picture(False)
    reference = preprocess(encode(ink), 10**7)
    rgb = np.stack([255 - ink, 255 - ink // 2, 255 - ink], axis=-1)  # green-ish ink on white paper
    assert np.abs(preprocess(encode(rgb), 10**7) - reference).max() < 0.05
    rgba = np.zeros((200, 200, 4), np.uint8)
    rgba[..., 3] = ink  # black ink on a transparent sheet
    assert np.abs(preprocess(encode(rgba), 10**7) - reference).max() < 0.05


def test_dark_ink_on_dark_grey_paper_is_read_as_ink() -> None:
    # Paper darker than mid-grey, ink darker still: the side of the background the ink is on decides.
    paper = np.full((100, 100), 100, np.uint8)
    paper[30:70, 45:55] = 0
    x = preprocess(encode(paper), 10**7)[0, :, :, 0]
    assert x.max() > 0.9 and (x > 0.5).sum() > 20  # a bright bar in the frame, not an empty one


@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_picture_is_no_digit_not_a_guess(value: int) -> None:
    with pytest.raises(NoDigitFound, match="no digit found"):
        preprocess(encode(np.full((50, 50), value, np.uint8)), 10**7)
    with pytest.raises(NoDigitFound):
        preprocess(encode(np.full((1, 1), value, np.uint8)), 10**7)


def test_digits_in_mnist_layout_survive_the_round_trip() -> None:
    from sklearn.datasets import load_digits

    from trainer.data import digits_to_mnist_form

    # The trainer keeps each digit where it sat in its 8x8 frame; this conversion centres the ink, so a
    # digit may move by a pixel or two (the model trains with +/-2 px shifts for exactly that).
    x = digits_to_mnist_form(load_digits().images[:20])
    corrs = []
    for img in x:
        big = np.asarray(Image.fromarray((img[:, :, 0] * 255).astype(np.uint8)).resize((112, 112), Image.BICUBIC))
        for picture in (big, 255 - big):
            back = preprocess(encode(picture), 10**7)[0]
            corrs.append(np.corrcoef(back.ravel(), img.ravel())[0, 1])
    assert np.mean(corrs) > 0.9 and min(corrs) > 0.5


@pytest.mark.parametrize(
    "data", [b"not an image at all", encode(bar_picture(False))[:60], b"\x89PNG\r\n\x1a\n" + b"\0" * 40]
)
def test_undecodable_images_are_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="decode"):
        preprocess(data, 10**7)


def test_too_many_pixels_is_payload_too_large() -> None:
    data = encode(np.zeros((3000, 3000), np.uint8))  # compresses to a few KB
    assert len(data) < 100_000
    with pytest.raises(PayloadTooLarge, match="exceeds the limit"):
        preprocess(data, max_pixels=1_000_000)


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGBA"), ("PNG", "L"), ("JPEG", "RGB")])
def test_large_pictures_are_read_at_a_working_size_and_give_the_same_input(fmt: str, mode: str) -> None:
    # The bar picture at 20x (4000x4000): scaled down before the float work, it must come out as the
    # 200x200 original does, and peak memory must stay near the decoded image's own size.
    import tracemalloc

    small = bar_picture(True)
    big = np.asarray(Image.fromarray(small).resize((4000, 4000), Image.NEAREST))
    data = encode(big, fmt, mode)
    reference = preprocess(encode(small, fmt, mode), 10**8)
    tracemalloc.start()
    try:
        x = preprocess(data, 10**8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.abs(x - reference).max() < 0.1
    # numpy's buffers are traced (Pillow's own are not): before the reduction, the float copies of a
    # 16-megapixel picture alone came to 64 MB each.
    assert peak < 24 * 2**20, peak


def test_exif_orientation_is_applied() -> None:
    # A phone photo stored sideways with Orientation 6 (rotate 90 clockwise to view): the bar, 60 tall and
    # 30 wide as seen, is stored 30 tall and 60 wide.
    seen = bar_picture(False)
    stored = np.ascontiguousarray(np.rot90(seen, k=1))  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", quality=95, exif=exif)
    x = preprocess(buf.getvalue(), 10**7)[0, :, :, 0]
    top, bottom, left, right = content_box(x)
    assert bottom - top > right - left  # taller than wide, as seen
    assert np.abs(x - preprocess(encode(seen, "JPEG"), 10**7)[0, :, :, 0]).max() < 0.1
