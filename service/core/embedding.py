"""An image embedding as cached and served, with its byte encoding."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

EmbeddingDtype = Literal["float16", "float32"]

#: magic, dtype code, 4 dims, width, height — then the raw little-endian array.
_HEADER = struct.Struct("<4sc4I2I")
_MAGIC = b"ESE1"
_CODES: dict[EmbeddingDtype, bytes] = {"float16": b"e", "float32": b"f"}
_DTYPES = {code: name for name, code in _CODES.items()}
EMBEDDING_SHAPE = (1, 256, 64, 64)


def image_id_of(data: bytes) -> str:
    """Lowercase hex SHA-256 of the uploaded bytes: clients can compute it themselves."""
    return hashlib.sha256(data).hexdigest()


class CorruptEmbeddingError(ValueError):
    """Bytes from a cache that do not decode as an embedding record."""


@dataclass(frozen=True)
class Embedding:
    """``array``: ``[1, 256, 64, 64]`` in the cache dtype; size of the upright original."""

    array: NDArray[np.floating[Any]]
    width: int
    height: int

    @property
    def dtype(self) -> EmbeddingDtype:
        return "float16" if self.array.dtype == np.float16 else "float32"

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes) + _HEADER.size

    def as_float32(self) -> NDArray[np.float32]:
        return self.array.astype(np.float32, copy=False)

    @classmethod
    def from_float32(
        cls, array: NDArray[np.floating[Any]], width: int, height: int, dtype: EmbeddingDtype
    ) -> Embedding:
        """From an encoder's output (float32, or float16: converted only if ``dtype`` differs).

        The record owns writable memory (a response buffer is read-only): copied if needed.
        """
        own = np.ascontiguousarray(array.reshape(EMBEDDING_SHAPE), dtype=dtype)
        return cls(own if own.flags.writeable else own.copy(), width, height)

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(
            _MAGIC, _CODES[self.dtype], *self.array.shape, self.width, self.height
        )
        return header + self.array.astype(self.array.dtype.newbyteorder("<"), copy=False).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Embedding:
        if len(data) < _HEADER.size:
            raise CorruptEmbeddingError("record shorter than its header")
        magic, code, d0, d1, d2, d3, width, height = _HEADER.unpack_from(data)
        if magic != _MAGIC or code not in _DTYPES:
            raise CorruptEmbeddingError("unknown record format")
        dtype = np.dtype(_DTYPES[code]).newbyteorder("<")
        shape = (d0, d1, d2, d3)
        body = memoryview(data)[_HEADER.size :]
        if shape != EMBEDDING_SHAPE or len(body) != int(np.prod(shape)) * dtype.itemsize:
            raise CorruptEmbeddingError("record size does not match its header")
        array = np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
        return cls(array, int(width), int(height))
