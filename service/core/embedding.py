"""An image embedding as cached and served, with its byte encoding.

Three dtypes (``ESAM_EMBEDDING_DTYPE``): ``float32`` (the encoder's own values),
``float16`` and ``int8`` — symmetric, one float32 scale per channel (256), quantised
once where the embedding is made and dequantised only as a decoder's transient input.

The record (what Redis holds) is a header, then the array, little-endian:

- format 1 (``ESE1``): float16 or float32 values. Still written for the float dtypes,
  so replicas of earlier releases keep reading them during a rolling upgrade.
- format 2 (``ESE2``): int8 — the header of format 1, then the 256 float32 scales, then
  the values. A replica of an earlier release takes such a record for a corrupt one
  (drops it, encodes again): switch to int8 once every replica runs this release.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

EmbeddingDtype = Literal["float16", "float32", "int8"]
EMBEDDING_DTYPES: tuple[EmbeddingDtype, ...] = get_args(EmbeddingDtype)
EMBEDDING_SHAPE = (1, 256, 64, 64)
CHANNELS = EMBEDDING_SHAPE[1]

#: magic, dtype code, 4 dims, width, height — then (format 2) the scales, then the array.
_HEADER = struct.Struct("<4sc4I2I")
_FORMATS: dict[bytes, dict[bytes, EmbeddingDtype]] = {
    b"ESE1": {b"e": "float16", b"f": "float32"},
    b"ESE2": {b"b": "int8"},
}
_CODES: dict[EmbeddingDtype, tuple[bytes, bytes]] = {
    dtype: (magic, code) for magic, codes in _FORMATS.items() for code, dtype in codes.items()
}
_NAMES: dict[np.dtype[Any], EmbeddingDtype] = {np.dtype(name): name for name in EMBEDDING_DTYPES}
_SCALES = np.dtype("<f4")


def image_id_of(data: bytes) -> str:
    """Lowercase hex SHA-256 of the uploaded bytes: clients can compute it themselves."""
    return hashlib.sha256(data).hexdigest()


class CorruptEmbeddingError(ValueError):
    """Bytes from a cache that do not decode as an embedding record."""


def quantise(array: NDArray[np.floating[Any]]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """``[1, 256, 64, 64]`` floats → int8 values and one scale per channel (symmetric:
    ``value ≈ q * scale``, ``|q| ≤ 127``; an all-zero channel gets scale 1)."""
    values = np.asarray(array, dtype=np.float32)
    peak = np.abs(values).max(axis=(0, 2, 3))
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.rint(values / scales[None, :, None, None])
    return np.clip(q, -127, 127, out=q).astype(np.int8), scales


@dataclass(frozen=True)
class Embedding:
    """``array``: ``[1, 256, 64, 64]`` in the record's dtype (int8: quantised values, with
    ``scales`` ``[256]``); ``width``, ``height``: the size of the upright original."""

    array: NDArray[Any]
    width: int
    height: int
    scales: NDArray[np.float32] | None = None

    @property
    def dtype(self) -> EmbeddingDtype:
        return _NAMES[self.array.dtype]

    @property
    def nbytes(self) -> int:
        """Bytes the record takes (as held in memory, and as its encoding's length)."""
        scales = 0 if self.scales is None else int(self.scales.nbytes)
        return int(self.array.nbytes) + scales + _HEADER.size

    def as_float32(self) -> NDArray[np.float32]:
        """The values as the decoder takes them (a transient: int8 dequantised here)."""
        if self.scales is None:
            return self.array.astype(np.float32, copy=False)
        out = self.array.astype(np.float32)
        out *= self.scales[None, :, None, None]
        return out

    def as_float(self) -> NDArray[np.floating[Any]]:
        """Floats a client can decode with: float16 and float32 as held, int8 dequantised to
        float16 (its 8 significant bits fit float16's 11). The ``.npy`` download's array."""
        if self.scales is None:
            return self.array
        return self.as_float32().astype(np.float16)

    @classmethod
    def from_array(
        cls, array: NDArray[np.floating[Any]], width: int, height: int, dtype: EmbeddingDtype
    ) -> Embedding:
        """From an encoder's output (float32 or float16) in the cache's ``dtype``: converted
        only if it differs; quantised here, once, for int8.

        The record owns writable memory (a response buffer is read-only): copied if needed.
        """
        shaped = array.reshape(EMBEDDING_SHAPE)
        if dtype == "int8":
            values, scales = quantise(shaped)
            return cls(values, width, height, scales)
        own = np.ascontiguousarray(shaped, dtype=dtype)
        return cls(own if own.flags.writeable else own.copy(), width, height)

    def to_bytes(self) -> bytes:
        magic, code = _CODES[self.dtype]
        header = _HEADER.pack(magic, code, *self.array.shape, self.width, self.height)
        scales = b"" if self.scales is None else self.scales.astype(_SCALES, copy=False).tobytes()
        body = self.array.astype(self.array.dtype.newbyteorder("<"), copy=False).tobytes()
        return header + scales + body

    @classmethod
    def from_bytes(cls, data: bytes) -> Embedding:
        """Records of either format; anything else is ``CorruptEmbeddingError``."""
        if len(data) < _HEADER.size:
            raise CorruptEmbeddingError("record shorter than its header")
        magic, code, d0, d1, d2, d3, width, height = _HEADER.unpack_from(data)
        name = _FORMATS.get(magic, {}).get(code)
        if name is None:
            raise CorruptEmbeddingError("unknown record format")
        dtype = np.dtype(name).newbyteorder("<")
        shape = (d0, d1, d2, d3)
        scale_bytes = CHANNELS * _SCALES.itemsize if name == "int8" else 0
        body = memoryview(data)[_HEADER.size :]
        size = int(np.prod(shape)) * dtype.itemsize
        if shape != EMBEDDING_SHAPE or len(body) != scale_bytes + size:
            raise CorruptEmbeddingError("record size does not match its header")
        scales = None
        if scale_bytes:
            scales = np.frombuffer(body[:scale_bytes], dtype=_SCALES).astype(np.float32)
            if not (np.isfinite(scales).all() and (scales > 0).all()):
                raise CorruptEmbeddingError("record scales are not positive and finite")
        values = np.frombuffer(body[scale_bytes:], dtype=dtype).reshape(shape)
        return cls(values.astype(dtype.newbyteorder("=")), int(width), int(height), scales)
