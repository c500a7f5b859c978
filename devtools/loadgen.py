"""A bounded load generator that behaves like annotators at work.

Each simulated annotator opens images one after another: it uploads the image
(``POST /embed``), then sends a burst of clicks and boxes for it (``POST
/segment`` with the ``image_id``), and sometimes returns to an image it had
opened before (prompts by ``image_id`` only; when that answers 404
``embedding_not_found`` it uploads the image again, as a real client must).
Every loop is bounded by a number of images and by a deadline, so a run always
stops by itself. Used by ``bench/load.py`` and by the fault tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class LoadConfig:
    annotators: int = 8
    images_per_annotator: int = 3
    prompts_per_image: tuple[int, int] = (3, 8)
    revisit_probability: float = 0.3
    image_size: tuple[int, int] = (640, 480)
    deadline_s: float = 300.0
    seed: int = 0
    api_key: str | None = None
    #: like a polite client: retry an upload answered 503/429 after its Retry-After (≤ 5 s)
    upload_retries: int = 0


@dataclass(frozen=True)
class Sample:
    route: str
    status: int  # 0: no HTTP answer (connection refused, reset, timeout)
    start: float  # seconds since the run started
    latency_s: float
    code: str | None = None  # the error code of a 4xx/5xx answer


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    image_ids: set[str] = field(default_factory=set)

    def by_route(self) -> dict[str, list[Sample]]:
        routes: dict[str, list[Sample]] = defaultdict(list)
        for sample in self.samples:
            routes[sample.route].append(sample)
        return dict(routes)

    @property
    def failed(self) -> list[Sample]:
        """Answers that are not part of the protocol: 5xx, 429 and no answer at all."""
        return [s for s in self.samples if s.status == 0 or s.status >= 500 or s.status == 429]

    @property
    def unexpected(self) -> list[Sample]:
        """4xx other than the resend signal (404 embedding_not_found)."""
        return [
            s
            for s in self.samples
            if 400 <= s.status < 500 and s.status != 429 and s.code != "embedding_not_found"
        ]

    def summary_rows(self) -> list[str]:
        rows = []
        for route, samples in sorted(self.by_route().items()):
            ok = [s.latency_s for s in samples if 200 <= s.status < 300]
            lat = np.asarray(ok or [float("nan")]) * 1e3
            errors = sum(1 for s in samples if s.status == 0 or s.status >= 400)
            rows.append(
                f"| {route} | {len(samples)} | {len(samples) / self.wall_s:.2f} | "
                f"{np.percentile(lat, 50):.0f} | {np.percentile(lat, 95):.0f} | "
                f"{np.percentile(lat, 99):.0f} | {errors / len(samples):.1%} |"
            )
        return rows


def jpeg_image(seed: int, size: tuple[int, int]) -> bytes:
    """A distinct, smooth, compressible test photo (its SHA-256 differs per seed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, size[1] // 16), max(2, size[0] // 16), 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def random_prompt(rng: random.Random, width: int, height: int) -> dict[str, Any]:
    if rng.random() < 0.25:
        x0, y0 = rng.uniform(0, width * 0.6), rng.uniform(0, height * 0.6)
        return {
            "box": [x0, y0, x0 + rng.uniform(10, width * 0.4), y0 + rng.uniform(10, height * 0.4)]
        }
    points = [[rng.uniform(0, width), rng.uniform(0, height)] for _ in range(rng.randint(1, 3))]
    return {"points": points, "labels": [1] + [rng.randint(0, 1) for _ in points[1:]]}


@dataclass(frozen=True)
class Visit:
    """One image opened by an annotator: a new upload, or a return by ``image_id`` only."""

    image_seed: int
    revisit: bool
    prompts: tuple[dict[str, Any], ...]


def plan(config: LoadConfig) -> list[list[Visit]]:
    """Every annotator's visits, fixed by the seed before the run (the run only adds resends)."""
    plans = []
    width, height = config.image_size
    for index in range(config.annotators):
        rng = random.Random(config.seed * 1000 + index)  # noqa: S311 - simulation, not crypto
        opened: list[int] = []
        visits = []
        for n in range(config.images_per_annotator):
            revisit = bool(opened) and rng.random() < config.revisit_probability
            if revisit:
                seed = rng.choice(opened)
            else:
                seed = config.seed * 100_000 + index * 1000 + n
                opened.append(seed)
            prompts = tuple(
                random_prompt(rng, width, height)
                for _ in range(rng.randint(*config.prompts_per_image))
            )
            visits.append(Visit(seed, revisit, prompts))
        plans.append(visits)
    return plans


async def run_load(
    client: httpx.AsyncClient | Sequence[httpx.AsyncClient],
    config: LoadConfig,
    on_sample: Callable[[Sample], None] | None = None,
) -> LoadResult:
    """Run the annotators; with several clients (replicas), requests go round-robin."""
    clients = [client] if isinstance(client, httpx.AsyncClient) else list(client)
    turn = itertools.count()
    result = LoadResult()
    start = time.perf_counter()
    deadline = start + config.deadline_s
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}

    async def call(route: str, **kwargs: Any) -> httpx.Response | None:
        t0 = time.perf_counter()
        response: httpx.Response | None
        try:
            target = clients[next(turn) % len(clients)]
            response = await target.post(
                route, headers={**headers, **kwargs.pop("headers", {})}, **kwargs
            )
            status = response.status_code
        except httpx.HTTPError:
            response, status = None, 0
        code = None
        if response is not None and status >= 400:
            try:
                code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
        sample = Sample(route, status, t0 - start, time.perf_counter() - t0, code)
        result.samples.append(sample)
        if on_sample:
            on_sample(sample)
        return response

    async def upload(image: bytes) -> str | None:
        for _ in range(config.upload_retries + 1):
            response = await call("/embed", content=image, headers={"Content-Type": "image/jpeg"})
            if response is None or response.status_code not in (429, 503):
                break
            if time.perf_counter() > deadline:
                return None
            await asyncio.sleep(min(5.0, float(response.headers.get("Retry-After", "1"))))
        if response is None or response.status_code != 200:
            return None
        image_id: str = response.json()["image_id"]
        result.image_ids.add(image_id)
        return image_id

    async def annotator(visits: list[Visit]) -> None:
        for visit in visits:
            if time.perf_counter() > deadline:
                return
            image = jpeg_image(visit.image_seed, config.image_size)
            if visit.revisit:
                image_id: str | None = hashlib.sha256(image).hexdigest()
            else:
                image_id = await upload(image)
            for prompt in visit.prompts:
                if image_id is None or time.perf_counter() > deadline:
                    break
                response = await call("/segment", json={"image_id": image_id, "prompts": [prompt]})
                if response is not None and response.status_code == 404:
                    image_id = await upload(image)  # evicted or never cached: resend

    await asyncio.gather(*(annotator(visits) for visits in plan(config)))
    result.wall_s = time.perf_counter() - start
    return result
