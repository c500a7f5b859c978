"""Hostile input against a running gateway: status, code, latency and peak memory for each.

Starts the real gateway (``python -m service``, embedded mode, an API key set)
and sends each hostile request; reads the gateway process's peak RSS
(``VmHWM`` in ``/proc/<pid>/status``) before and after each one, and checks
that nothing was cached (``HEAD /embeddings/<id>``).

    python bench/hostile.py
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from devtools.gateway_process import GatewayProcess

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"
KEY = "bench-hostile-key-0123456789"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb() -> bytes:
    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * 50_000) * 8, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def jpeg(exif: bytes = b"", value: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), value, np.uint8)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def point(x: float, y: float) -> dict[str, Any]:
    return {"points": [[x, y]], "labels": [1]}


def oversized_upload(port: int) -> tuple[int, float, int]:
    """Declare a 1 GiB body, send 64 KiB and read the answer: the gateway must not wait for the rest."""
    import socket

    start = time.perf_counter()
    head = (
        f"POST /embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {1 << 30}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + b"\0" * 65536)
        answer = sock.recv(4096).decode("latin-1")
    return int(answer.split(" ", 2)[1]), (time.perf_counter() - start) * 1e3, len(head) + 65536


def main() -> None:
    gateway = GatewayProcess(
        {
            "ESAM_CHECKPOINT": str(CHECKPOINT) if CHECKPOINT.exists() else "random",
            "ESAM_API_KEYS": KEY,
        }
    )
    gateway.start()
    auth = {"Authorization": f"Bearer {KEY}"}
    good = jpeg()
    good_id = hashlib.sha256(good).hexdigest()
    fresh = jpeg(value=150)  # never uploaded successfully: must stay uncached
    exif_junk = b"Exif\x00\x00" + np.random.default_rng(0).bytes(65_000)
    nan_body = json.dumps(
        {
            "image": base64.b64encode(fresh).decode(),
            "prompts": [point(float("nan"), 1)],
        }
    ).encode()
    cases: list[tuple[str, str, dict[str, Any], bytes | None]] = [
        (
            "valid 64×48 JPEG (reference: the first encode; cached)",
            "/embed",
            {"content": good, "headers": {"Content-Type": "image/jpeg"}},
            None,
        ),
        (
            "decompression bomb (PNG declaring 50,000×50,000)",
            "/embed",
            {"content": bomb(), "headers": {"Content-Type": "image/png"}},
            bomb(),
        ),
        (
            "truncated JPEG",
            "/embed",
            {"content": good[:200], "headers": {"Content-Type": "image/jpeg"}},
            good[:200],
        ),
        (
            "random bytes (1 MiB)",
            "/embed",
            {
                "content": np.random.default_rng(1).bytes(1 << 20),
                "headers": {"Content-Type": "image/jpeg"},
            },
            None,
        ),
        (
            "65 KB junk EXIF block (image otherwise valid: accepted)",
            "/embed",
            {"content": jpeg(exif_junk), "headers": {"Content-Type": "image/jpeg"}},
            None,
        ),
        (
            "malformed JSON",
            "/segment",
            {"content": b'{"prompts": [', "headers": {"Content-Type": "application/json"}},
            None,
        ),
        (
            "deeply nested JSON (100,000 levels)",
            "/segment",
            {
                "content": b"[" * 100_000 + b"]" * 100_000,
                "headers": {"Content-Type": "application/json"},
            },
            None,
        ),
        ("base64 that is not base64", "/embed", {"json": {"image": "****"}}, None),
        (
            "NaN coordinate",
            "/segment",
            {"content": nan_body, "headers": {"Content-Type": "application/json"}},
            fresh,
        ),
        (
            "negative coordinate",
            "/segment",
            {"json": {"image_id": good_id, "prompts": [point(-5, 1)]}},
            None,
        ),
        (
            "huge coordinate (1e300)",
            "/segment",
            {
                "json": {
                    "image": base64.b64encode(fresh).decode(),
                    "prompts": [point(1e300, 1)],
                }
            },
            fresh,
        ),
        (
            "7 points in one prompt",
            "/segment",
            {
                "json": {
                    "image_id": good_id,
                    "prompts": [{"points": [[1, 1]] * 7, "labels": [1] * 7}],
                }
            },
            None,
        ),
        (
            "10,000 prompts",
            "/segment",
            {"json": {"image_id": "0" * 64, "prompts": [point(1, 1)] * 10_000}},
            None,
        ),
        (
            "unknown image_id",
            "/segment",
            {"json": {"image_id": "0" * 64, "prompts": [point(1, 1)]}},
            None,
        ),
        (
            "missing API key",
            "/embed",
            {"content": fresh, "headers": {"Content-Type": "image/jpeg"}, "auth": False},
            fresh,
        ),
        (
            "wrong API key",
            "/embed",
            {
                "content": fresh,
                "headers": {
                    "Content-Type": "image/jpeg",
                    "Authorization": "Bearer wrong-key-0123456789",
                },
                "auth": False,
            },
            fresh,
        ),
    ]
    try:
        with httpx.Client(base_url=gateway.url, timeout=120) as client:
            print(
                f"# hostile input against the gateway (pid {gateway.pid}); peak RSS after start-up "
                f"{peak_rss_mb(gateway.pid):.0f} MiB"
            )
            print(
                "| input | route | status | code | latency ms | peak RSS growth MiB | cached afterwards |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for name, route, kwargs, image in cases:
                kwargs = dict(kwargs)
                use_auth = kwargs.pop("auth", True)
                headers = {**(auth if use_auth else {}), **kwargs.pop("headers", {})}
                before = peak_rss_mb(gateway.pid)
                start = time.perf_counter()
                response = client.post(route, headers=headers, **kwargs)
                latency = (time.perf_counter() - start) * 1e3
                growth = peak_rss_mb(gateway.pid) - before
                try:
                    code = response.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "-"
                cached = "-"
                if image is not None and response.status_code >= 400:
                    head = client.head(
                        f"/embeddings/{hashlib.sha256(image).hexdigest()}", headers=auth
                    )
                    cached = "yes" if head.status_code == 204 else "no"
                print(
                    f"| {name} | {route} | {response.status_code} | {code} | {latency:.0f} | {growth:.1f} | {cached} |"
                )
            before = peak_rss_mb(gateway.pid)
            status, latency, sent = oversized_upload(gateway.port)
            print(
                f"| oversized body (declares 1 GiB; raw socket) | /embed | {status} | image_too_large | "
                f"{latency:.0f} | {peak_rss_mb(gateway.pid) - before:.1f} | - |"
            )
            print(
                f"\n(the oversized upload was answered after {sent} of its declared 1 GiB had been sent)"
            )
    finally:
        gateway.stop()


if __name__ == "__main__":
    main()
