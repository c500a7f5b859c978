"""Hostile input: each gets its documented 4xx before any encode, with bounded memory, caching
nothing."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from devtools.peak_memory import measure
from service.errors import ImageTooLargeError
from service.model.preprocess import decode_image
from tests.gateway.fixtures import Gateway, GatewayFactory
from tests.support import assert_error, png_bytes


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few-KB PNG that declares 50,000 × 50,000 RGB pixels (7.5 GB decoded)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 8, 9)  # the first rows; the header is the bomb
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_exif(exif: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_bomb_is_refused_from_its_header_without_decoding(tmp_path: Path) -> None:
    bomb = decompression_bomb()
    assert len(bomb) < 64 * 1024
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(bomb, max_pixels=50_000_000)
    # what reading its header costs, in a fresh process: nothing near its 7.5 GB
    (tmp_path / "bomb.png").write_bytes(bomb)
    measured = measure("header", tmp_path / "bomb.png")
    assert measured["outcome"] == "image_too_large"
    assert measured["growth_mb"] < 16


async def test_bomb_through_the_gateway(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/embed", content=decompression_bomb(), headers={"Content-Type": "image/png"}
    )
    assert_error(response, 413, "image_too_large")
    assert gateway.metric("esam_pending_encodes") == 0  # refused before admission
    assert gateway.encodes == 0
    assert len(gateway.state.embeddings.cache.l1) == 0


@pytest.mark.parametrize("size", [60_000, 65_000])
async def test_huge_exif_block_is_ignored(gateway: Gateway, size: int) -> None:
    junk = b"Exif\x00\x00" + np.random.default_rng(size).integers(0, 256, size, np.uint8).tobytes()
    response = await gateway.client.post(
        "/embed", content=jpeg_with_exif(junk), headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == (64, 48)


async def test_png_with_megabytes_of_metadata(gateway: Gateway) -> None:
    data = png_bytes(32, 24)
    iend = data.rindex(b"IEND") - 4
    bloated = data[:iend] + png_chunk(b"tEXt", b"comment\0" + b"x" * (4 << 20)) + data[iend:]
    response = await gateway.client.post(
        "/embed", content=bloated, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text  # a big comment is no reason to refuse
    assert (response.json()["width"], response.json()["height"]) == (32, 24)


HOSTILE: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "truncated jpeg",
        {"content": jpeg_with_exif(b"")[:300], "headers": {"Content-Type": "image/jpeg"}},
        422,
        "invalid_image",
    ),
    (
        "random bytes",
        {
            "content": np.random.default_rng(5).bytes(50_000),
            "headers": {"Content-Type": "image/jpeg"},
        },
        422,
        "invalid_image",
    ),
    ("not base64", {"json": {"image": "%%%%"}}, 422, "invalid_image"),
    (
        "nested json",
        {"content": b"[" * 50_000 + b"]" * 50_000, "headers": {"Content-Type": "application/json"}},
        422,
        "invalid_request",
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_embeds_are_refused_before_any_encode(
    gateway: Gateway, name: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = await gateway.client.post("/embed", **kwargs)
    assert_error(response, status, code)
    assert gateway.encodes == 0
    assert len(gateway.state.embeddings.cache.l1) == 0


async def test_oversized_body_is_refused_before_it_is_read(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(max_image_bytes=1 << 20) as gw:
        response = await gw.client.post(
            "/embed",
            content=b"\0" * 4096,
            headers={"Content-Type": "image/png", "Content-Length": str(1 << 30)},
        )
        assert_error(response, 413, "image_too_large")
        assert gw.encodes == 0
