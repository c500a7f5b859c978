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
    record = Embedding.from_array(array, 1072, 603, dtype)
    data = record.to_bytes()
    back = Embedding.from_bytes(data)
    assert (back.width, back.height, back.dtype) == (1072, 603, dtype)
    np.testing.assert_array_equal(back.array, record.array)
    itemsize = 2 if dtype == "float16" else 4
    assert len(data) == 256 * 64 * 64 * itemsize + struct.calcsize("<4sc4I2I")
    assert data[:4] == b"ESE1"


def test_corrupt_records_are_refused() -> None:
    good = Embedding.from_array(np.zeros((256, 64, 64), np.float32), 4, 4, "float16").to_bytes()
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
    record = Embedding.from_array(frozen, 4, 4, dtype)
    assert record.array.flags.writeable
    assert record.as_float32().flags.writeable  # what the decoder hands to torch


def channel_peaks(array: np.ndarray) -> np.ndarray:
    """Each channel's largest magnitude, ``[256]``."""
    peaks: np.ndarray = np.abs(array.reshape(256, -1)).max(axis=1)
    return peaks


def test_int8_records_are_format_2_and_half_the_bytes_of_float16() -> None:
    array = np.random.default_rng(1).standard_normal((1, 256, 64, 64)).astype(np.float32)
    array[0, 7] = 0.0  # an all-zero channel
    record = Embedding.from_array(array, 1072, 603, "int8")
    assert record.dtype == "int8"
    assert record.array.dtype == np.int8
    assert record.scales is not None
    assert record.scales.shape == (256,)
    data = record.to_bytes()
    header = struct.calcsize("<4sc4I2I")
    assert data[:5] == b"ESE2b"
    assert len(data) == header + 256 * 4 + 256 * 64 * 64 == record.nbytes
    half = Embedding.from_array(array, 1072, 603, "float16").to_bytes()
    assert len(data) <= len(half) / 2 + 1100
    back = Embedding.from_bytes(data)
    assert (back.width, back.height, back.dtype) == (1072, 603, "int8")
    np.testing.assert_array_equal(back.array, record.array)
    assert back.scales is not None
    np.testing.assert_array_equal(back.scales, record.scales)
    # symmetric, one scale per channel: |q| <= 127 and every value within half a step
    step = channel_peaks(array) / 127
    error = np.abs(back.as_float32() - array).reshape(256, -1).max(axis=1)
    assert (error <= step / 2 + 1e-6).all()
    assert np.abs(record.array.astype(np.int16)).max() == 127
    assert (back.as_float32()[0, 7] == 0).all()
    assert back.as_float32().dtype == np.float32


def test_an_int8_record_downloads_as_float16_close_to_its_values() -> None:
    array = np.random.default_rng(2).standard_normal((1, 256, 64, 64)).astype(np.float32)
    record = Embedding.from_array(array, 8, 8, "int8")
    floats = record.as_float()
    assert floats.dtype == np.float16
    assert floats.shape == (1, 256, 64, 64)
    step = (channel_peaks(array) / 127)[None, :, None, None]
    assert (np.abs(floats.astype(np.float32) - array) <= step / 2 + 2e-3).all()
    floats_kept: tuple[EmbeddingDtype, ...] = ("float16", "float32")
    for dtype in floats_kept:
        kept = Embedding.from_array(array, 8, 8, dtype)
        assert kept.as_float() is kept.array


def test_records_of_format_1_still_read() -> None:
    """A float16 record exactly as the releases before int8 wrote it (built here by hand)."""
    values = np.arange(256 * 64 * 64, dtype=np.float32).reshape(1, 256, 64, 64) % 7 - 3
    old = struct.pack("<4sc4I2I", b"ESE1", b"e", 1, 256, 64, 64, 640, 480)
    old += values.astype("<f2").tobytes()
    record = Embedding.from_bytes(old)
    assert (record.dtype, record.width, record.height, record.scales) == ("float16", 640, 480, None)
    np.testing.assert_array_equal(record.as_float32(), values)
    assert record.to_bytes() == old  # and float records are still written so


def test_corrupt_int8_records_are_refused() -> None:
    array = np.ones((1, 256, 64, 64), np.float32)
    good = Embedding.from_array(array, 4, 4, "int8").to_bytes()
    header = struct.calcsize("<4sc4I2I")
    zero_scale = good[:header] + np.zeros(256, "<f4").tobytes() + good[header + 1024 :]
    nan_scale = good[:header] + np.full(256, np.nan, "<f4").tobytes() + good[header + 1024 :]
    no_scales = good[:header] + good[header + 1024 :]
    as_format_1 = b"ESE1" + good[4:]  # int8 was never a format-1 dtype
    for bad in (good[:-1], no_scales, zero_scale, nan_scale, as_format_1, b"ESE2e" + good[5:]):
        with pytest.raises(CorruptEmbeddingError):
            Embedding.from_bytes(bad)
