"""The encoder interface every backend implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray


class Encoder(Protocol):
    """Turns a resized image into its embedding.

    ``encode`` takes ``[3, 1024, 1024]`` float32 RGB in [0, 1] (resized as the
    reference, not normalised) and returns float32 ``[256, 64, 64]``. It
    raises :class:`service.errors.EncoderUnavailableError` when the backend
    cannot answer, and :class:`service.errors.OverloadedError` when it refuses
    more work.
    """

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool: ...

    async def encode(self, pixels: NDArray[np.float32]) -> NDArray[np.float32]: ...
