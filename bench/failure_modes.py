"""Failure modes, measured on the full local stack: hung Triton, overload, Redis down,
DELETE across replicas.

Starts a private ``redis-server``, the local Triton (CPU) and two gateway processes
(``ESAM_ENCODER=triton``, ``ESAM_CACHE=redis``, a 2 s encode deadline, 4 pending
encodes at most), then, with bounded request loops:

1. Triton hung (SIGSTOP): six uploads one after another (status, latency), a click on a
   cached image, ``/readyz``; twelve concurrent uploads (429s and their latency); then
   SIGCONT and the time until an upload succeeds again.
2. Redis stopped: a click on a cached image, a DELETE (503 ``cache_unavailable``), an upload.
3. DELETE on replica A of an embedding replica B holds in memory: time until B answers 404.

    python bench/failure_modes.py          # prints a Markdown table; JSON in build/bench/
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import platform
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from devtools.gateway_process import GatewayProcess
from devtools.redis_server import RedisServer, free_port
from devtools.triton import LocalTriton

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"
DEADLINE_S = 2.0


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


async def upload(client: httpx.AsyncClient, seed: int) -> tuple[int, float, str]:
    start = time.monotonic()
    response = await client.post("/embed", content=png(seed), headers={"Content-Type": "image/png"})
    code = "" if response.status_code == 200 else response.json()["error"]["code"]
    return response.status_code, (time.monotonic() - start) * 1000, code


async def click(client: httpx.AsyncClient, image_id: str) -> tuple[int, float]:
    start = time.monotonic()
    response = await client.post(
        "/segment", json={"image_id": image_id, "prompts": [{"points": [[10, 10]], "labels": [1]}]}
    )
    return response.status_code, (time.monotonic() - start) * 1000


async def scenarios(
    a: str, b: str, triton: LocalTriton, redis: RedisServer
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(mode: str, what: str, result: str, ms: float | str) -> None:
        rows.append({"mode": mode, "what": what, "result": result, "ms": ms})
        print(f"| {mode} | {what} | {result} | {ms if isinstance(ms, str) else f'{ms:,.0f}'} |")

    print("| failure | request | answer | latency ms |\n| --- | --- | --- | --- |")
    async with (
        httpx.AsyncClient(base_url=a, timeout=60) as ga,
        httpx.AsyncClient(base_url=b, timeout=60) as gb,
    ):
        status, _, _ = await upload(ga, 1)
        assert status == 200
        warm_id = (
            await ga.post("/embed", content=png(1), headers={"Content-Type": "image/png"})
        ).json()["image_id"]
        assert triton.process is not None
        os.killpg(triton.process.pid, signal.SIGSTOP)
        hung = [await upload(ga, 10 + i) for i in range(6)]
        for i, (status, ms, code) in enumerate(hung, 1):
            row("Triton hung", f"upload {i} of 6 (one at a time)", f"{status} {code}", ms)
        status, ms = await click(gb, warm_id)
        row("Triton hung", "click on a cached image", str(status), ms)
        ready = await ga.get("/readyz")
        row(
            "Triton hung",
            "GET /readyz",
            f"{ready.status_code} encoder={ready.json()['encoder']}",
            "-",
        )
        burst = await asyncio.gather(*(upload(ga, 100 + i) for i in range(12)))
        refused = [ms for status, ms, _ in burst if status == 429]
        others = sorted({f"{s} {c}" for s, _, c in burst if s != 429})
        row(
            "Triton hung, 12 concurrent uploads (limit 4)",
            f"{len(refused)} × 429 overloaded; the rest {', '.join(others)}",
            "429 at once",
            f"max {max(refused):,.0f}" if refused else "-",
        )
        os.killpg(triton.process.pid, signal.SIGCONT)
        resumed = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            status, _, _ = await upload(ga, 500 + attempt)
            if status == 200 or time.monotonic() - resumed > 30:
                break
            await asyncio.sleep(0.2)
        row(
            "Triton resumed (SIGCONT)",
            f"first successful upload (attempt {attempt})",
            str(status),
            (time.monotonic() - resumed) * 1000,
        )

        redis.stop()
        status, ms = await click(ga, warm_id)
        row("Redis down", "click on an image in the replica's memory", str(status), ms)
        start = time.monotonic()
        deleted = await ga.delete(f"/embeddings/{warm_id}")
        row(
            "Redis down",
            "DELETE /embeddings/{id}",
            f"{deleted.status_code} {deleted.json()['error']['code']} Retry-After "
            f"{deleted.headers.get('Retry-After')}",
            (time.monotonic() - start) * 1000,
        )
        status, ms, _ = await upload(ga, 900)
        row("Redis down", "upload of a new image", str(status), ms)
        redis.start()
        await asyncio.sleep(3.0)  # the replicas resubscribe to the invalidation channel

        shared = (
            await ga.post("/embed", content=png(2), headers={"Content-Type": "image/png"})
        ).json()["image_id"]
        assert (await click(gb, shared))[0] == 200  # now in B's memory
        start = time.monotonic()
        deleted = await ga.delete(f"/embeddings/{shared}")
        polls = 0
        while (await click(gb, shared))[0] != 404 and time.monotonic() - start < 10:
            polls += 1
        row(
            "DELETE on replica A",
            f"replica B answers 404 (after {polls} clicks that still found it)",
            f"{deleted.status_code} then 404",
            (time.monotonic() - start) * 1000,
        )
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        redis = RedisServer(Path(workdir))
        redis.start()
        triton = LocalTriton(
            Path(workdir),
            str(CHECKPOINT) if CHECKPOINT.exists() else "random",
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            log_path=Path(workdir) / "triton.log",
        )
        triton.start()
        settings = {
            "ESAM_CHECKPOINT": str(CHECKPOINT) if CHECKPOINT.exists() else "random",
            "ESAM_ENCODER": "triton",
            "ESAM_TRITON_URL": triton.grpc_url,
            "ESAM_CACHE": "redis",
            "ESAM_REDIS_URL": redis.url,
            "ESAM_REDIS_RETRY_S": "0.5",
            "ESAM_ENCODE_TIMEOUT_S": str(DEADLINE_S),
            "ESAM_MAX_PENDING_ENCODES": "4",
        }
        try:
            with GatewayProcess(settings) as a, GatewayProcess(settings) as b:
                rows = asyncio.run(scenarios(a.url, b.url, triton, redis))
        finally:
            if triton.process is not None:
                os.killpg(triton.process.pid, signal.SIGCONT)
            triton.stop()
            redis.stop()
    out = REPO / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "failure_modes.json").write_text(
        json.dumps(
            {"machine": platform.platform(), "deadline_s": DEADLINE_S, "rows": rows}, indent=2
        )
    )


if __name__ == "__main__":
    main()
