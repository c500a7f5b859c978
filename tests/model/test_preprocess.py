"""Image decoding and the reference's resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from service.model.preprocess import decode_image, resize_to_model

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_round_trip(fmt: str) -> None:
    decoded = decode_image(encode(Image.fromarray(PIXELS), fmt))
    np.testing.assert_array_equal(decoded, PIXELS)


def test_webp_lossless_round_trips() -> None:
    decoded = decode_image(encode(Image.fromarray(PIXELS), "WEBP", lossless=True))
    np.testing.assert_array_equal(decoded, PIXELS)


def test_jpeg_decodes_close_to_source() -> None:
    smooth = np.full((40, 60, 3), (200, 120, 40), dtype=np.uint8)
    decoded = decode_image(encode(Image.fromarray(smooth), "JPEG", quality=95))
    assert decoded.shape == (40, 60, 3)
    assert np.abs(decoded.astype(int) - smooth).max() <= 3


def test_grayscale_becomes_rgb() -> None:
    grey = PIXELS[..., 0]
    decoded = decode_image(encode(Image.fromarray(grey, mode="L"), "PNG"))
    np.testing.assert_array_equal(decoded, np.repeat(grey[..., None], 3, axis=2))


def test_palette_becomes_rgb() -> None:
    palette_img = Image.fromarray(PIXELS).quantize(colors=16)
    expected = np.asarray(palette_img.convert("RGB"))
    decoded = decode_image(encode(palette_img, "PNG"))
    np.testing.assert_array_equal(decoded, expected)


def test_rgba_drops_alpha() -> None:
    rgba = np.dstack([PIXELS, np.full(PIXELS.shape[:2], 7, dtype=np.uint8)])
    decoded = decode_image(encode(Image.fromarray(rgba, mode="RGBA"), "PNG"))
    np.testing.assert_array_equal(decoded, PIXELS)


def test_sixteen_bit_grey_keeps_the_high_byte() -> None:
    grey16 = (np.arange(64 * 32, dtype=np.uint32) * 31 % 65536).astype(np.uint16).reshape(32, 64)
    img = Image.fromarray(grey16)  # mode I;16
    decoded = decode_image(encode(img, "PNG"))
    np.testing.assert_array_equal(decoded[..., 1], (grey16 >> 8).astype(np.uint8))


def test_exif_orientation_is_applied() -> None:
    img = Image.fromarray(PIXELS)  # 53 wide, 37 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode_image(encode(img, "PNG", exif=exif))
    assert decoded.shape == (53, 37, 3)
    np.testing.assert_array_equal(decoded, np.rot90(PIXELS, k=-1))


def test_gif_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="GIF"):
        decode_image(encode(Image.fromarray(PIXELS), "GIF"))


@pytest.mark.parametrize(
    "data", [b"", b"\x00" * 10, RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()]
)
def test_garbage_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        decode_image(data)


def test_truncated_jpeg_is_invalid() -> None:
    data = encode(Image.fromarray(PIXELS), "JPEG")
    with pytest.raises(InvalidImageError, match="decoded"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_is_checked_from_the_header() -> None:
    data = encode(Image.fromarray(PIXELS), "PNG")
    with pytest.raises(ImageTooLargeError, match="53×37"):
        decode_image(data, max_pixels=53 * 37 - 1)
    assert decode_image(data, max_pixels=53 * 37).shape == (37, 53, 3)


def test_resize_is_bilinear_without_antialiasing() -> None:
    # 2×2 → 4×4 with align_corners=False: known values by hand.
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 1] = 255  # top-right white
    out = resize_to_model(rgb, size=4)[0]
    expected_row0 = torch.tensor([0.0, 0.25, 0.75, 1.0]) * 1.0
    torch.testing.assert_close(out[0], expected_row0)
    torch.testing.assert_close(out[1], expected_row0 * 0.75)
    assert out.shape == (4, 4)


def test_resize_output_shape_and_range() -> None:
    out = resize_to_model(PIXELS)
    assert out.shape == (3, 1024, 1024)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0
