"""``.npy`` responses for embeddings."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi import Response
from numpy.typing import NDArray

NPY_MEDIA_TYPE = "application/x-npy"
NPY_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The embedding as a .npy array [1, 256, 64, 64]: float32 or float16 as "
        "cached (ESAM_EMBEDDING_DTYPE), float16 dequantised from int8 records.",
        "content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


def npy_response(array: NDArray[Any], headers: dict[str, str]) -> Response:
    """``array`` as a ``.npy`` body (an embedding: ``Embedding.as_float()``)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return Response(buffer.getvalue(), media_type=NPY_MEDIA_TYPE, headers=headers)


def wants_npy(accept: str | None) -> bool:
    return bool(accept) and NPY_MEDIA_TYPE in (accept or "").lower()
