"""A soak run: the gateway beside a local Triton (CPU) and a private Redis, under a steady
load for a long time, with one Redis restart and one Triton restart on the way.

Annotators (``--annotators``) each open a new image every ``--period-s`` seconds (an
upload), click it ``--clicks`` times with a think time between clicks, and delete one
image in five (``DELETE /embeddings/{id}``). The cache TTL is short (``--ttl-s``), so
Redis's memory must level off. At a third of the run Redis is stopped for 5 s and started
again (empty); at two thirds Triton is stopped and started again.

Every 15 s it samples the gateway's RSS, open file descriptors and threads (from /proc)
and Redis's ``used_memory`` and key count. It reports failed requests (no answer, 5xx,
429) apart from the documented answers during the restarts (uploads 503
``encoder_unavailable`` while Triton is away, DELETE 503 ``cache_unavailable`` while
Redis is), and checks: RSS after warm-up within +5 %, descriptors and threads flat.

    python bench/soak.py                    # 30 minutes; JSON in build/bench/soak.json,
                                            # the servers' logs beside it
    python bench/soak.py --minutes 3        # a short try of the same run

Not part of CI (it takes half an hour); its figures are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from devtools.gateway_process import GatewayProcess
from devtools.loadgen import jpeg_image, random_prompt
from devtools.redis_server import RedisServer, free_port
from devtools.triton import LocalTriton

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"
SAMPLE_EVERY_S = 15.0
IMAGE_SIZE = (320, 240)


@dataclass
class Answer:
    route: str
    status: int  # 0: no answer
    code: str | None
    at_s: float
    latency_s: float


@dataclass
class Probe:
    at_s: float
    rss_mb: float
    fds: int
    threads: int
    redis_used_mb: float | None
    redis_keys: int | None


@dataclass
class Window:
    """A restart: from the stop until its service answered again (+ a few seconds)."""

    what: str
    start_s: float
    end_s: float = float("inf")


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)  # the run's start

    def now(self) -> float:
        return time.monotonic() - self.t0


def proc_status(pid: int) -> tuple[float, int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    rss_mb = int(fields["VmRSS"].split()[0]) / 1024
    return rss_mb, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


def documented(answer: Answer, windows: list[Window]) -> bool:
    """A 503 that the restart under way explains (docs/reliability.md)."""
    inside = [w.what for w in windows if w.start_s <= answer.at_s <= w.end_s]
    if answer.status != 503:
        return False
    if "triton" in inside and answer.code == "encoder_unavailable":
        return True
    return "redis" in inside and answer.code == "cache_unavailable"


async def annotator(
    index: int, client: httpx.AsyncClient, args: argparse.Namespace, run: Run, stop_at: float
) -> None:
    rng = random.Random(index)
    n = 0

    async def call(route: str, method: str, url: str, **kwargs: Any) -> httpx.Response | None:
        t0 = time.monotonic()
        try:
            response: httpx.Response | None = await client.request(method, url, **kwargs)
        except httpx.HTTPError:
            response = None
        code = None
        if response is not None and response.status_code >= 400:
            try:
                code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
        status = 0 if response is None else response.status_code
        run.answers.append(Answer(route, status, code, t0 - run.t0, time.monotonic() - t0))
        return response

    await asyncio.sleep(index * args.period_s / args.annotators)  # spread the uploads
    while time.monotonic() < stop_at:
        session = time.monotonic()
        n += 1
        image = jpeg_image(index * 1_000_000 + n, IMAGE_SIZE)
        response = await call(
            "/embed", "POST", "/embed", content=image, headers={"Content-Type": "image/jpeg"}
        )
        if response is not None and response.status_code == 200:
            image_id = response.json()["image_id"]
            for _ in range(args.clicks):
                await asyncio.sleep(rng.uniform(0.2, 0.8))  # think time
                prompt = random_prompt(rng, *IMAGE_SIZE)
                answer = await call(
                    "/segment",
                    "POST",
                    "/segment",
                    json={"image_id": image_id, "prompts": [prompt], "mask_format": "none"},
                )
                if answer is not None and answer.status_code == 404:
                    break  # deleted or lost with Redis: the next session uploads anew
            if rng.random() < 0.2:
                await call("/embeddings", "DELETE", f"/embeddings/{image_id}")
        elapsed = time.monotonic() - session
        await asyncio.sleep(max(0.0, args.period_s - elapsed))


async def prober(pid: int, redis_url: str, run: Run, stop_at: float) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=1)
    while time.monotonic() < stop_at:
        rss, fds, threads = proc_status(pid)
        try:
            info = client.info("memory")
            used: float | None = float(info["used_memory"]) / 2**20
            keys: int | None = int(client.dbsize())
        except redis.RedisError:
            used, keys = None, None
        run.probes.append(Probe(run.now(), rss, fds, threads, used, keys))
        await asyncio.sleep(SAMPLE_EVERY_S)


async def restarts(
    server: RedisServer, triton: LocalTriton, gateway_url: str, run: Run, total_s: float
) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=5) as client:
        await asyncio.sleep(total_s / 3 - run.now())
        window = Window("redis", run.now())
        run.windows.append(window)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(5)
        await asyncio.to_thread(server.start)
        await _until_ready(client, "redis")
        window.end_s = run.now() + 5
        await asyncio.sleep(max(0.0, 2 * total_s / 3 - run.now()))
        window = Window("triton", run.now())
        run.windows.append(window)
        await asyncio.to_thread(triton.stop)
        await asyncio.to_thread(triton.start)
        await _until_ready(client, "encoder")
        window.end_s = run.now() + 5


async def _until_ready(client: httpx.AsyncClient, part: str) -> None:
    """Until /readyz says ``part`` is up again (the gateway's own view of it)."""
    for _ in range(600):
        try:
            body = (await client.get("/readyz")).json()
            if body.get(part) in ("ok", "ready", True):
                return
        except (httpx.HTTPError, ValueError):
            pass
        await asyncio.sleep(0.5)


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    server = RedisServer(workdir)
    server.start()
    triton = LocalTriton(
        workdir / "triton",
        str(CHECKPOINT),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=args.out.with_name("soak-triton.log"),
    )
    triton.start()
    gateway = GatewayProcess(
        {
            "ESAM_CHECKPOINT": str(CHECKPOINT),
            "ESAM_ENCODER": "triton",
            "ESAM_TRITON_URL": triton.grpc_url,
            "ESAM_CACHE": "redis",
            "ESAM_REDIS_URL": server.url,
            "ESAM_CACHE_TTL_S": str(args.ttl_s),
            "ESAM_ENCODE_TIMEOUT_S": "60",
            "ESAM_LOG_LEVEL": "info",
        },
        stderr=args.out.with_name("soak-gateway.log"),  # kept beside the figures
    )
    gateway.start()
    total_s = args.minutes * 60
    try:
        run = Run()
        stop_at = run.t0 + total_s
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
            await asyncio.gather(
                prober(gateway.pid, server.url, run, stop_at),
                restarts(server, triton, gateway.url, run, total_s),
                *(annotator(i, client, args, run, stop_at) for i in range(args.annotators)),
            )
        rss, fds, threads = proc_status(gateway.pid)
        run.probes.append(Probe(run.now(), rss, fds, threads, None, None))
    finally:
        gateway.stop()
        triton.stop()
        server.stop()
    return report(args, run, total_s)


def report(args: argparse.Namespace, run: Run, total_s: float) -> dict[str, Any]:
    warm_from = min(total_s * 0.2, 300.0)
    warm = [p for p in run.probes if p.at_s >= warm_from]
    first = warm[: max(1, len(warm) // 10)]
    last = warm[-max(1, len(warm) // 10) :]
    rss_start = statistics.median(p.rss_mb for p in first)
    rss_end = statistics.median(p.rss_mb for p in last)
    failed = [
        a
        for a in run.answers
        if (a.status == 0 or a.status >= 500 or a.status == 429) and not documented(a, run.windows)
    ]
    restart_503 = [a for a in run.answers if documented(a, run.windows)]
    by_route: dict[str, list[Answer]] = {}
    for answer in run.answers:
        by_route.setdefault(answer.route, []).append(answer)
    used = [p.redis_used_mb for p in run.probes if p.redis_used_mb is not None]
    keys = [p.redis_keys for p in run.probes if p.redis_keys is not None]
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "command": (
            f"python bench/soak.py --minutes {args.minutes:g} --annotators {args.annotators} "
            f"--period-s {args.period_s:g} --clicks {args.clicks} --ttl-s {args.ttl_s}"
        ),
        "requests": {
            route: {
                "count": len(answers),
                "per_s": round(len(answers) / total_s, 2),
                "statuses": {
                    str(s): sum(1 for a in answers if a.status == s)
                    for s in sorted({a.status for a in answers})
                },
                "p50_ms": round(1e3 * statistics.median(a.latency_s for a in answers), 1),
            }
            for route, answers in sorted(by_route.items())
        },
        "failed": len(failed),
        "failed_examples": [asdict(a) for a in failed[:10]],
        "documented_503_during_restarts": len(restart_503),
        "windows": [asdict(w) for w in run.windows],
        "rss_mb_after_warm_up": round(rss_start, 1),
        "rss_mb_at_end": round(rss_end, 1),
        "rss_growth": round(rss_end / rss_start - 1, 4),
        "fds": [min(p.fds for p in warm), max(p.fds for p in warm)],
        "threads": [min(p.threads for p in warm), max(p.threads for p in warm)],
        "redis_used_mb_max": round(max(used), 1) if used else None,
        "redis_keys_max": max(keys) if keys else None,
        "redis_keys_at_end": keys[-1] if keys else None,
        "probes": [asdict(p) for p in run.probes],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--annotators", type=int, default=3)
    parser.add_argument("--period-s", type=float, default=8.0, help="seconds per image")
    parser.add_argument("--clicks", type=int, default=5, help="clicks per image")
    parser.add_argument("--ttl-s", type=int, default=300, help="ESAM_CACHE_TTL_S")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench" / "soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k != "probes"}
    print(json.dumps(summary, indent=1))
    ok = (
        result["failed"] == 0
        and result["rss_growth"] <= 0.05
        and result["fds"][1] - result["fds"][0] <= 8
        and result["threads"][1] - result["threads"][0] <= 8
    )
    print("soak:", "passed" if ok else "FAILED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
