"""The embedding record's byte format."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from service.core.embedding import CorruptEmbeddingError, Embedding, EmbeddingDtype, image_id_of


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(dtype: EmbeddingDtype) -> None:
    array = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    record = Embedding.from_float32(array, 1072, 603, dtype)
    data = record.to_bytes()
    back = Embedding.from_bytes(data)
    assert (back.width, back.height, back.dtype) == (1072, 603, dtype)
    np.testing.assert_array_equal(back.array, record.array)
    itemsize = 2 if dtype == "float16" else 4
    assert len(data) == 256 * 64 * 64 * itemsize + struct.calcsize("<4sc4I2I")
    assert data[:4] == b"ESE1"


def test_corrupt_records_are_refused() -> None:
    good = Embedding.from_float32(np.zeros((256, 64, 64), np.float32), 4, 4, "float16").to_bytes()
    for bad in (b"", b"XXXX" + good[4:], good[:-1], good[:30]):
        with pytest.raises(CorruptEmbeddingError):
            Embedding.from_bytes(bad)


def test_image_id_is_sha256_hex() -> None:
    assert image_id_of(b"abc") == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_read_only_response_buffer_becomes_a_writable_record(dtype: EmbeddingDtype) -> None:
    raw = np.zeros((256, 64, 64), dtype=dtype).tobytes()  # as a Triton response holds it
    frozen = np.frombuffer(raw, dtype=dtype).reshape(256, 64, 64)
    assert not frozen.flags.writeable
    record = Embedding.from_float32(frozen, 4, 4, dtype)
    assert record.array.flags.writeable
    assert record.as_float32().flags.writeable  # what the decoder hands to torch
