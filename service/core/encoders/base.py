"""The encoder interface every backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from service.model.preprocess import ImageHeader


@dataclass(frozen=True)
class EncodedImage:
    """The embedding ``[256, 64, 64]`` (float32, or float16 as Triton's FP16 output comes)
    and the size of the upright image."""

    embedding: NDArray[np.floating[Any]]
    width: int
    height: int


class Encoder(Protocol):
    """Turns an image file into its embedding.

    ``encode`` takes the file's bytes as uploaded and its header (already read and
    checked by the caller: format, upright size, pixel limit). Where the image is
    decoded and resized is the backend's business: in this process (``local``) or
    beside the encoder in Triton (``triton``: only the bytes travel). It raises
    :class:`service.errors.InvalidImageError` for an image that passed its header but
    cannot be decoded, :class:`service.errors.EncoderUnavailableError` when the backend
    cannot answer within its deadline (each backend owns the one deadline of an encode).
    """

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool: ...

    async def encode(self, data: bytes, header: ImageHeader) -> EncodedImage: ...
