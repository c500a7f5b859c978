"""Image decoding and the reference's resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from service.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from service.model.preprocess import (
    BAND_BYTES,
    ArrayRows,
    decode_image,
    load_for_model,
    open_image,
    orient_chw,
    read_header,
    resize_chw_to_model,
    resize_to_model,
)
from tests.conftest import Fixture

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


def reference_resize(rgb: np.ndarray, size: int = 1024) -> torch.Tensor:
    """The reference pipeline, computed by PyTorch itself: /255 in float, then F.interpolate."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    out = torch.nn.functional.interpolate(x, (size, size), mode="bilinear", align_corners=False)
    return out[0]


@pytest.mark.parametrize(
    "shape", [(603, 1072), (37, 53), (1024, 1024), (2000, 1500), (5, 3000), (3000, 7)]
)
def test_banded_resize_matches_pytorch(shape: tuple[int, int]) -> None:
    rgb = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    torch.testing.assert_close(resize_to_model(rgb), reference_resize(rgb), rtol=0, atol=1e-6)


def test_the_device_path_resizes_as_the_host_path() -> None:
    """``resize_chw_to_model`` (the GPU JPEG path, after nvJPEG) gives the hand-worked values
    and the banded host path's output, at the size it is given."""
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 1] = 255
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    out = resize_chw_to_model(chw, size=4)[0]
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.25, 0.75, 1.0]) * 0.75)
    for shape, size in (((603, 1072), 1024), ((37, 53), 512)):
        rgb = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
        device = resize_chw_to_model(torch.from_numpy(rgb).permute(2, 0, 1), size)
        assert device.shape == (3, size, size)
        torch.testing.assert_close(device, resize_to_model(rgb, size), rtol=0, atol=1e-6)


def test_a_very_wide_image_uses_thin_bands() -> None:
    wide = np.random.default_rng(1).integers(0, 256, (4000, 9000, 3), dtype=np.uint8)
    reads: list[tuple[int, int]] = []

    class Recording(ArrayRows):
        def rows(self, start: int, stop: int) -> np.ndarray:
            reads.append((start, stop))
            return super().rows(start, stop)

    out = resize_to_model(Recording(wide))
    torch.testing.assert_close(out, reference_resize(wide), rtol=0, atol=1e-6)
    assert len(reads) > 1024 // 64  # thinner bands than for a small image
    assert max(stop - start for start, stop in reads) * 9000 * 4 <= 3 * BAND_BYTES


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_band_by_band(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(PIXELS), "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    image = open_image(data)
    assert (image.height, image.width) == expected.shape[:2]
    bands = [image.rows(top, min(top + 5, image.height)) for top in range(0, image.height, 5)]
    np.testing.assert_array_equal(np.concatenate(bands), expected)
    stored = torch.from_numpy(PIXELS).permute(2, 0, 1)  # as a GPU decoder would hand it over
    oriented = orient_chw(stored, orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(oriented, expected)
    header = read_header(data)
    assert (header.width, header.height, header.orientation) == (
        expected.shape[1],
        expected.shape[0],
        orientation,
    )


def test_header_reads_no_pixels_and_checks_the_limit() -> None:
    data = encode(Image.fromarray(PIXELS), "PNG")
    header = read_header(data[:100], max_pixels=53 * 37)  # the header alone is enough
    assert (header.format, header.width, header.height) == ("PNG", 53, 37)
    with pytest.raises(ImageTooLargeError):
        read_header(data, max_pixels=100)
    with pytest.raises(InvalidImageError):
        decode_image(data[:100])  # the pixels are not there


def test_load_for_model_is_decode_then_resize(fixture: Fixture) -> None:
    data = fixture.image_path.read_bytes()
    torch.testing.assert_close(
        load_for_model(data), reference_resize(decode_image(data)), rtol=0, atol=1e-6
    )
