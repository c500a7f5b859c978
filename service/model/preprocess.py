"""Image decoding and the reference's resize, in bounded memory.

The one implementation of bytes → ``[3, 1024, 1024]`` model input, used by the
embedded encoder (and, on the Triton path, by the preprocessing model):

* :func:`read_header` reads format, upright size and EXIF orientation without
  decoding a pixel (the gateway's checks: format, pixel limit, prompt bounds).
* :func:`open_image` decodes once; :class:`UprightImage` then hands out row bands
  of the *upright* image (orientation and the RGB conversion are applied per band).
* :func:`resize_to_model` resizes band by band: the reference's bilinear resize
  is separable and linear, so it is computed from the uint8 rows it needs, and no
  float copy of the full-resolution image ever exists (peak extra memory: a few
  MB per band, whatever the image size).

Orientation: the EXIF orientation tag is applied, so the image the model sees is
the one a viewer displays. Point and box coordinates sent by clients are in the
*displayed* orientation (width × height after rotation), which is also what
``/embed`` reports as ``width`` and ``height``.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import ExifTags, Image, UnidentifiedImageError

from service.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError

#: Pillow format names accepted from clients.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO"})
#: Output rows computed per band by :func:`resize_to_model` (fewer for very large images,
#: so that the source strip of one band stays near ``BAND_BYTES``).
BAND_ROWS = 64
BAND_BYTES = 2 << 20

RGBImage = NDArray[np.uint8]
log = logging.getLogger(__name__)

#: EXIF orientation → the Pillow transposition that makes the image upright
#: (as ``ImageOps.exif_transpose``).
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageHeader:
    """What the file says before any pixel is decoded; ``width``/``height`` are upright."""

    format: str
    width: int
    height: int
    orientation: int = 1


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8); an unreadable EXIF block counts as 1, not as an error."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF (phones, editors): keep the stored orientation
        log.info("ignoring an unreadable EXIF block")
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _open(data: bytes, max_pixels: int | None) -> tuple[Image.Image, ImageHeader]:
    """Open lazily and check format and size; nothing is decoded yet."""
    if not data:
        raise InvalidImageError("the image is empty")
    img = Image.open(io.BytesIO(data))
    if img.format not in SUPPORTED_FORMATS:
        raise UnsupportedMediaTypeError(
            f"{img.format} images are not supported; send JPEG, PNG, WebP, BMP or TIFF"
        )
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"the image has no pixels ({width}×{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image has {width}×{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    orientation = _orientation(img)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return img, ImageHeader(str(img.format), width, height, orientation)


def _guarded(action: str, data: bytes, max_pixels: int | None, decode: bool) -> UprightImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img, header = _open(data, max_pixels)
            if decode:
                img.load()
            return UprightImage(img, header)
    except (ImageTooLargeError, UnsupportedMediaTypeError, InvalidImageError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image is too large to {action} safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError("the data is not an image in a known format") from exc
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError) as exc:
        raise InvalidImageError(f"the image could not be decoded: {exc}") from exc


def read_header(data: bytes, max_pixels: int | None = None) -> ImageHeader:
    """Format, upright size and orientation, from the header alone (no pixel decoded).

    Raises :class:`UnsupportedMediaTypeError`, :class:`ImageTooLargeError` (more than
    ``max_pixels``) or :class:`InvalidImageError`, as :func:`open_image` would; data
    whose header is fine can still fail to decode later.
    """
    return _guarded("read", data, max_pixels, decode=False).header


def open_image(data: bytes, max_pixels: int | None = None) -> UprightImage:
    """Decode JPEG/PNG/WebP/BMP/TIFF bytes (pixel limit checked from the header first)."""
    return _guarded("decode", data, max_pixels, decode=True)


def _to_rgb(img: Image.Image) -> RGBImage:
    """Any Pillow mode → ``H×W×3`` uint8. 16-bit and 32-bit grey keep their top 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(img).astype(np.int64)
        grey8 = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if img.mode == "F":
        grey_f = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if grey_f.max(initial=0.0) <= 1.0 else 1.0
        grey8 = np.clip(np.rint(grey_f * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, P, PA, RGBA (alpha dropped), CMYK, YCbCr, 1...
    return np.asarray(img, dtype=np.uint8)


class RowSource(Protocol):
    """An upright RGB image that can be read in row bands."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    def rows(self, start: int, stop: int) -> RGBImage: ...


class UprightImage:
    """A decoded image, read as upright ``H×W×3`` uint8 row bands."""

    def __init__(self, img: Image.Image, header: ImageHeader) -> None:
        self._img = img
        self.header = header

    @property
    def width(self) -> int:
        return self.header.width

    @property
    def height(self) -> int:
        return self.header.height

    def rows(self, start: int, stop: int) -> RGBImage:
        """Upright rows ``[start, stop)``: the matching strip of the stored image, turned."""
        stored_w, stored_h = self._img.size
        orientation = self.header.orientation
        if orientation in (1, 2):
            box = (0, start, stored_w, stop)
        elif orientation in (3, 4):
            box = (0, stored_h - stop, stored_w, stored_h - start)
        elif orientation in (5, 6):
            box = (start, 0, stop, stored_h)
        else:  # 7, 8
            box = (stored_w - stop, 0, stored_w - start, stored_h)
        strip = self._img.crop(box)
        if orientation != 1:
            strip = strip.transpose(_TRANSPOSE[orientation])
        return _to_rgb(strip)

    def to_array(self) -> RGBImage:
        """The whole upright image as a writable array."""
        rgb = self.rows(0, self.height)
        return rgb if rgb.flags.writeable else rgb.copy()


class ArrayRows:
    """An ``H×W×3`` uint8 array as a :class:`RowSource`."""

    def __init__(self, rgb: RGBImage) -> None:
        self._rgb = rgb

    @property
    def width(self) -> int:
        return int(self._rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self._rgb.shape[0])

    def rows(self, start: int, stop: int) -> RGBImage:
        return self._rgb[start:stop]


def crop_pngs(
    data: bytes, boxes: list[tuple[int, int, int, int]], max_pixels: int | None = None
) -> list[bytes]:
    """Regions ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the upright image, each as a PNG.

    Decodes once; the same image and box always give the same bytes (so the same
    cache key). Only the rows each crop spans are converted at a time.
    """
    image = open_image(data, max_pixels)
    out = []
    for x0, y0, x1, y1 in boxes:
        buffer = io.BytesIO()
        Image.fromarray(image.rows(y0, y1)[:, x0:x1]).save(buffer, format="PNG", compress_level=1)
        out.append(buffer.getvalue())
    return out


def decode_image(data: bytes, max_pixels: int | None = None) -> RGBImage:
    """Decode to an upright ``H×W×3`` uint8 array (the whole image, for small uses).

    Raises :class:`InvalidImageError` for undecodable or truncated data,
    :class:`UnsupportedMediaTypeError` for other formats and
    :class:`ImageTooLargeError` when the image declares more than
    ``max_pixels`` pixels (checked from the header, before decoding).
    """
    return open_image(data, max_pixels).to_array()


def _taps(
    source_size: int, size: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]]:
    """Bilinear source indices and weights, as PyTorch computes them (``align_corners=False``).

    ``src = max((dst + 0.5) · in/out − 0.5, 0)``; the taps are ``floor(src)`` and the
    next index (clamped), with weight ``src − floor(src)`` on the second.
    """
    scale = source_size / size
    src = np.maximum((np.arange(size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    first = np.floor(src).astype(np.intp)
    second = np.minimum(first + 1, source_size - 1)
    weight = (src - first).astype(np.float32)
    return first, second, weight


def resize_to_model(image: RowSource | RGBImage, size: int = 1024) -> torch.Tensor:
    """Upright RGB → ``[3, size, size]`` float32 in [0, 1], as the reference computes it.

    The reference divides by 255, then resizes the whole image bilinearly
    (``align_corners=False``, no antialiasing, aspect ratio not preserved). Both steps
    are linear, so this computes the same values band by band from the uint8 rows each
    band needs (vertical pass, then horizontal), dividing by 255 last. Normalisation
    with the ImageNet mean/std happens inside the model.
    """
    source: RowSource = ArrayRows(image) if isinstance(image, np.ndarray) else image
    rows_a, rows_b, row_w = _taps(source.height, size)
    cols_a, cols_b, col_w = _taps(source.width, size)
    col_first, col_second = torch.from_numpy(cols_a), torch.from_numpy(cols_b)
    col_weight = torch.from_numpy(col_w)[None, :, None]
    out = torch.empty((size, size, 3), dtype=torch.float32)
    source_rows_per_row = max(1.0, source.height / size)
    band = int(BAND_BYTES / (source.width * 4 * source_rows_per_row))
    band = max(4, min(BAND_ROWS, band))
    for top in range(0, size, band):
        bottom = min(top + band, size)
        first = int(rows_a[top])
        rows = source.rows(first, int(rows_b[bottom - 1]) + 1)
        strip = torch.from_numpy(rows if rows.flags.writeable else rows.copy())
        upper = strip[torch.from_numpy(rows_a[top:bottom] - first)].float()
        lower = strip[torch.from_numpy(rows_b[top:bottom] - first)].float()
        vertical = torch.lerp(upper, lower, torch.from_numpy(row_w[top:bottom])[:, None, None])
        out[top:bottom] = torch.lerp(
            vertical.index_select(1, col_first), vertical.index_select(1, col_second), col_weight
        )
    out /= 255.0
    return out.permute(2, 0, 1).contiguous()


def resize_chw_to_model(rgb: torch.Tensor, size: int = 1024) -> torch.Tensor:
    """Upright ``[3, H, W]`` uint8 RGB on any device (nvJPEG's output on a GPU) →
    ``[3, size, size]`` float32 in [0, 1]: the reference's own steps at once (divide by 255,
    bilinear, ``align_corners=False``, no antialiasing), of which :func:`resize_to_model`
    is the banded host version."""
    x = rgb[None].float().div_(255.0)
    resized = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False
    )
    return resized[0]


def orient_chw(chw: torch.Tensor, orientation: int) -> torch.Tensor:
    """EXIF orientation on a ``[C, H, W]`` tensor (any device), as ``ImageOps.exif_transpose``.

    For pixels decoded elsewhere (nvJPEG on a GPU); :class:`UprightImage` does the same on
    the host, band by band.
    """
    rows, cols = -2, -1
    if orientation == 2:
        return chw.flip(cols)
    if orientation == 3:
        return chw.flip(rows).flip(cols)
    if orientation == 4:
        return chw.flip(rows)
    if orientation == 5:
        return chw.transpose(rows, cols)
    if orientation == 6:
        return chw.rot90(-1, (rows, cols))  # 90° clockwise
    if orientation == 7:
        return chw.flip(rows).flip(cols).transpose(rows, cols)
    if orientation == 8:
        return chw.rot90(1, (rows, cols))  # 90° counter-clockwise
    return chw


def load_for_model(data: bytes, max_pixels: int | None = None, size: int = 1024) -> torch.Tensor:
    """Bytes → ``[3, size, size]`` model input, decoding once in bounded extra memory."""
    return resize_to_model(open_image(data, max_pixels), size)


__all__ = [
    "SUPPORTED_FORMATS",
    "ArrayRows",
    "ImageHeader",
    "RGBImage",
    "RowSource",
    "UprightImage",
    "decode_image",
    "load_for_model",
    "open_image",
    "orient_chw",
    "read_header",
    "resize_chw_to_model",
    "resize_to_model",
]
