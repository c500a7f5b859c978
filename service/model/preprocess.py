"""Image decoding and the reference's resize + normalisation input pipeline.

Orientation: the EXIF orientation tag is applied while decoding, so the image
the model sees is the one a viewer displays. Point and box coordinates sent
by clients are therefore in the *displayed* orientation (width × height after
rotation), which is also what ``/embed`` reports as ``width`` and ``height``.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError

#: Pillow format names accepted from clients.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO"})

RGBImage = NDArray[np.uint8]
log = logging.getLogger(__name__)


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
    return np.array(img, dtype=np.uint8)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; an unreadable EXIF block is ignored, not fatal."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF (phones, editors): keep the stored orientation
        log.info("ignoring an unreadable EXIF block")
        return img
    return upright if upright is not None else img


def decode_image(data: bytes, max_pixels: int | None = None) -> RGBImage:
    """Decode JPEG/PNG/WebP/BMP/TIFF bytes to an upright ``H×W×3`` uint8 array.

    Raises :class:`InvalidImageError` for undecodable or truncated data,
    :class:`UnsupportedMediaTypeError` for other formats and
    :class:`ImageTooLargeError` when the image declares more than
    ``max_pixels`` pixels (checked from the header, before decoding).
    """
    if not data:
        raise InvalidImageError("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
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
                    f"the image has {width}×{height} = {width * height} pixels; "
                    f"the limit is {max_pixels}"
                )
            img.load()
            return _to_rgb(_upright(img))
    except (ImageTooLargeError, UnsupportedMediaTypeError, InvalidImageError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError("the data is not an image in a known format") from exc
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError) as exc:
        raise InvalidImageError(f"the image could not be decoded: {exc}") from exc


def resize_to_model(rgb: RGBImage, size: int = 1024) -> torch.Tensor:
    """``H×W×3`` uint8 → ``[3, size, size]`` float32 in [0, 1].

    As the reference: divide by 255, then bilinear resize of the whole image
    (``align_corners=False``, no antialiasing, aspect ratio not preserved).
    Normalisation with the ImageNet mean/std happens inside the model.
    """
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0]
