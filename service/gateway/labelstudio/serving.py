"""Label Studio's tasks and clicks → the core's embeddings and decoder → brush regions.

* A task's image is found by the labeling config's ``<Image value="$key">``, fetched
  once (``fetch.py``: Label Studio's own paths with its API key, other hosts only from
  the allow-list) and encoded through the same cache as ``/embed``; the reference →
  ``image_id`` pair is remembered (``ESAM_CACHE_TTL_S``; in Redis too, for every
  replica), so every later click on the task downloads nothing and encodes nothing.
* Clicks (context results): ``keypointlabels`` (percent; ``is_positive: false`` =
  background) and ``rectanglelabels`` (percent; top-left, width, height; the last box
  wins) make one prompt. One positive point alone → the best of the three multimask
  candidates; anything more → the single-mask output.
* No click (a task opened, "Retrieve predictions"): the image is encoded and cached,
  and the answer is empty or, with ``ESAM_LABEL_STUDIO_PREANNOTATE=everything``, the
  segment-everything masks; always one prediction per task.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
import uuid

import httpx
import numpy as np
from numpy.typing import NDArray

from service.core.decoders import DecodeRequest
from service.core.embedding import Embedding
from service.core.everything import EverythingParams, densest_grid
from service.core.tenancy import priority_scope
from service.errors import (
    EsamError,
    ImageUrlNotAllowedError,
    InvalidRequestError,
)
from service.gateway.images import decode_base64_image
from service.gateway.labelstudio.brush_rle import encode_brush_rle
from service.gateway.labelstudio.credentials import LabelStudioCredentials
from service.gateway.labelstudio.fetch import FetchPolicy, ImageFetcher, UpstreamStatusError
from service.gateway.labelstudio.label_config import LabelConfig, parse_label_config
from service.gateway.labelstudio.protocol import (
    BrushRegion,
    BrushValue,
    KeypointClick,
    PolygonRegion,
    PolygonValue,
    PredictRequest,
    PredictResponse,
    RectangleClick,
    SetupRequest,
    SetupResponse,
    Task,
    TaskPrediction,
)
from service.gateway.state import ServingState
from service.model.masks import decode_rle, mask_to_polygons
from service.model.prompts import MAX_POINTS, Prompt, prompts_to_arrays
from service.settings import Settings

log = logging.getLogger(__name__)

#: cloud-storage references Label Studio presigns for its tasks
PRESIGNED_SCHEMES = ("s3://", "gs://", "azure-blob://")
#: tasks of one "Retrieve predictions" request handled at once
BATCH_CONCURRENCY = 4
#: an empty prediction of a task that failed carries this after the model version, so
#: that the next "Retrieve predictions" tries it again (LS skips current versions)
FAILED_SUFFIX = "+failed"
#: ... and one still being fetched or encoded when the answer was due: the next
#: "Retrieve predictions" asks again and finds its embedding cached
PENDING_SUFFIX = "+pending"
MAX_BOX_POINTS = 4  # points beside a box (the decoder's six prompt slots)


#: the notes of which image id an image reference (a task's URL) had: kept per tenant (one
#: tenant's references say nothing of another's), shared by replicas with the Redis cache
#: (an image is downloaded once for all of them)
REFERENCE_NOTES = "lsref"


def _reference_note(tenant: str, reference: str) -> str:
    return f"{tenant}\n{reference}"


def _region_id() -> str:
    return uuid.uuid4().hex[:10]


def _prompt(
    clicks: list[KeypointClick | RectangleClick], width: int, height: int
) -> tuple[Prompt, str | None]:
    """Clicks (percent) → one prompt in pixels, and the label of the last click. A box
    thinner than a pixel (drawn at an edge) is one pixel wide."""
    points: list[list[float]] = []
    labels: list[int] = []
    box: list[float] | None = None
    label: str | None = None
    for click in clicks:
        value = click.value
        x = min(max(value.x, 0.0), 100.0) * width / 100
        y = min(max(value.y, 0.0), 100.0) * height / 100
        if isinstance(click, RectangleClick):
            rect = click.value
            corners = []
            for start, size, extent in ((x, rect.width, width), (y, rect.height, height)):
                end = min(start + size * extent / 100, float(extent))
                if end - start < 1:
                    start = min(start, extent - 1.0)
                    end = start + 1
                corners.append((start, end))
            (x0, x1), (y0, y1) = corners
            box = [x0, y0, x1, y1]
            names = rect.rectanglelabels or rect.labels
        else:
            points.append([x, y])
            labels.append(0 if click.is_positive is False else 1)
            names = click.value.keypointlabels or click.value.labels
        label = names[0] if names else label
    keep = MAX_BOX_POINTS if box is not None else MAX_POINTS  # the latest clicks count
    return Prompt(points=points[-keep:], labels=labels[-keep:], box=box), label


def _brush(
    config: LabelConfig, mask: NDArray[np.bool_], label: str | None, score: float
) -> BrushRegion:
    assert config.brush is not None
    height, width = mask.shape
    return BrushRegion(
        id=_region_id(),
        from_name=config.brush.name,
        to_name=config.image_name,
        original_width=width,
        original_height=height,
        value=BrushValue(rle=encode_brush_rle(mask), brushlabels=[label] if label else []),
        score=score,
    )


def _polygons(
    config: LabelConfig, mask: NDArray[np.bool_], label: str | None, score: float
) -> list[PolygonRegion]:
    assert config.polygon is not None
    height, width = mask.shape
    results = []
    for polygon in mask_to_polygons(mask):
        ring = polygon["exterior"]
        if len(ring) < 3:
            continue  # one or two pixels: no area to draw
        points = [(x * 100 / width, y * 100 / height) for x, y in ring]
        results.append(
            PolygonRegion(
                id=_region_id(),
                from_name=config.polygon.name,
                to_name=config.image_name,
                original_width=width,
                original_height=height,
                value=PolygonValue(points=points, polygonlabels=[label] if label else []),
                score=score,
            )
        )
    return results


def _regions(
    config: LabelConfig, mask: NDArray[np.bool_], label: str | None, score: float
) -> list[BrushRegion | PolygonRegion]:
    regions: list[BrushRegion | PolygonRegion] = []
    if config.brush:
        regions.append(_brush(config, mask, label, score))
    if config.polygon:
        regions += _polygons(config, mask, label, score)
    return regions


def everything_params(settings: Settings) -> EverythingParams:
    """``ESAM_LABEL_STUDIO_EVERYTHING`` over the defaults; the grid within the deployment's
    ``ESAM_MAX_EVERYTHING_PROMPTS`` (densest ≤ 32 when not given). Refused at start-up."""
    values = dict(settings.label_studio_everything)
    limit = settings.max_everything_prompts
    values.setdefault(
        "points_per_side", max(1, densest_grid(limit, 0, EverythingParams().points_per_side))
    )
    allowed = {f.name for f in dataclasses.fields(EverythingParams)} - {"crop_n_layers"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(
            f"ESAM_LABEL_STUDIO_EVERYTHING: unknown parameter(s) {unknown}; "
            f"known: {sorted(allowed)}"
        )
    params = EverythingParams(**values)  # type: ignore[arg-type]
    if params.points_per_side**2 > limit:
        raise ValueError(
            f"ESAM_LABEL_STUDIO_EVERYTHING: points_per_side {params.points_per_side} needs "
            f"{params.points_per_side**2} prompts; ESAM_MAX_EVERYTHING_PROMPTS is {limit}"
        )
    return params


class LabelStudioBackend:
    """The adapter's state: the fetcher, Label Studio's credentials, remembered images."""

    def __init__(self, settings: Settings, state: ServingState) -> None:
        self._settings = settings
        self._state = state
        self._client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=settings.fetch_timeout_s
        )
        self._credentials = (
            LabelStudioCredentials(
                settings.label_studio_url, settings.label_studio_api_key, self._client
            )
            if settings.label_studio_url
            else None
        )
        trusted = [self._credentials.base.host] if self._credentials else []
        policy = FetchPolicy.build(
            settings.fetch_allowed_hosts,
            trusted_hosts=trusted,
            max_bytes=settings.max_image_bytes,
            timeout_s=settings.fetch_timeout_s,
        )
        self._fetcher = ImageFetcher(policy, self._client)
        self._references = state.cache.notes(REFERENCE_NOTES)
        self._batch = asyncio.Semaphore(BATCH_CONCURRENCY)
        self._jobs: set[asyncio.Task[TaskPrediction | None]] = set()  # batch tasks running
        self._everything_params = everything_params(settings)

    @property
    def model_version(self) -> str:
        return self._state.model_id

    async def close(self) -> None:
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self._client.aclose()

    def setup(self, request: SetupRequest) -> SetupResponse:
        if request.label_config:
            parse_label_config(request.label_config)  # a config we cannot answer: 422 now
        return SetupResponse(model_version=self.model_version)

    async def predict(self, request: PredictRequest, tenant: str) -> PredictResponse:
        """``tenant``: the key's (Basic password's) tenant; a batch runs as bulk work."""
        config = parse_label_config(request.label_config)
        context = request.params.context.result if request.params and request.params.context else []
        clicks = [c for c in context if isinstance(c, KeypointClick | RectangleClick)]
        if len(request.tasks) == 1:  # a click or an opened task: its error is the answer
            task = request.tasks[0]
            return PredictResponse(results=[await self._task(task, config, clicks, tenant)])
        # Label Studio sends every selected task in one request and waits ML_TIMEOUT_PREDICT
        # (100 s): answer within the budget; what is not ready by then keeps going here
        budget = self._settings.label_studio_batch_budget_s
        deadline = time.monotonic() + budget
        with priority_scope("bulk"):  # the jobs keep the priority they were created with
            jobs = [
                asyncio.create_task(self._batched(t, config, deadline, tenant))
                for t in request.tasks
            ]
        for job in jobs:
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)
        await asyncio.wait(jobs, timeout=budget)
        pending = TaskPrediction(
            result=[], score=0.0, model_version=self.model_version + PENDING_SUFFIX
        )
        results = [(job.result() if job.done() else None) or pending for job in jobs]
        return PredictResponse(results=results)

    async def _batched(
        self, task: Task, config: LabelConfig, deadline: float, tenant: str
    ) -> TaskPrediction | None:
        """One task of a batch: None when its image was ready only after the answer."""
        async with self._batch:
            try:
                image_id, embedding = await self._embedding(task, config, tenant)
                if time.monotonic() > deadline:
                    return None  # answered as pending; the embedding is cached now
                return await self._answer(config, image_id, embedding, [])
            except EsamError as exc:
                log.warning("label studio task %s: %s: %s", task.id, exc.code, exc.message)
                version = self.model_version + FAILED_SUFFIX
                return TaskPrediction(result=[], score=0.0, model_version=version)

    async def _task(
        self,
        task: Task,
        config: LabelConfig,
        clicks: list[KeypointClick | RectangleClick],
        tenant: str,
    ) -> TaskPrediction:
        return await self._answer(config, *await self._embedding(task, config, tenant), clicks)

    async def _answer(
        self,
        config: LabelConfig,
        image_id: str,
        embedding: Embedding,
        clicks: list[KeypointClick | RectangleClick],
    ) -> TaskPrediction:
        if clicks:
            return await self._click(config, image_id, embedding, clicks)
        if self._settings.label_studio_preannotate == "everything":
            return await self._everything(config, embedding)
        return TaskPrediction(result=[], score=0.0, model_version=self.model_version)

    async def _click(
        self,
        config: LabelConfig,
        image_id: str,
        embedding: Embedding,
        clicks: list[KeypointClick | RectangleClick],
    ) -> TaskPrediction:
        width, height = embedding.width, embedding.height
        prompt, label = _prompt(clicks, width, height)
        points, labels = prompts_to_arrays(
            [prompt], width, height, img_size=self._state.loaded.model.config.img_size
        )
        request = DecodeRequest(
            image_id=image_id,
            embedding=embedding,
            points=points,
            labels=labels,
            candidates="best" if prompt.ambiguous else "single",  # SAM's click rule
            return_logits=False,
        )
        best = (await self._state.decoder.segment(request))[0][0]
        mask = await asyncio.to_thread(decode_rle, best.rle)
        regions = _regions(config, mask, config.label(label), best.score)
        return TaskPrediction(result=regions, score=best.score, model_version=self.model_version)

    async def _everything(self, config: LabelConfig, embedding: Embedding) -> TaskPrediction:
        whole = (0, 0, embedding.width, embedding.height)
        found = await self._state.decoder.everything([(whole, embedding)], self._everything_params)
        label = config.label(None)
        # the masks from their RLE off the event loop, as the decoder's thread made them before
        masks = await asyncio.to_thread(lambda: [proposal.mask for proposal in found])
        regions = []
        for proposal, mask in zip(found, masks, strict=True):
            regions += _regions(config, mask, label, proposal.predicted_iou)
        scores = [proposal.predicted_iou for proposal in found]
        score = float(np.mean(scores)) if scores else 0.0
        return TaskPrediction(result=regions, score=score, model_version=self.model_version)

    async def _embedding(
        self, task: Task, config: LabelConfig, tenant: str
    ) -> tuple[str, Embedding]:
        reference = task.data.get(config.image_key)
        if not isinstance(reference, str) or not reference:
            raise InvalidRequestError(f"task {task.id}: data.{config.image_key} holds no image URL")
        if reference.startswith("data:"):  # the image itself: nothing to fetch or remember
            result = await self._state.embeddings.embed(self._inline(reference), tenant=tenant)
            return result.image_id, result.embedding
        image_id = await self._references.get(_reference_note(tenant, reference))
        if image_id is not None:
            embedding = await self._state.embeddings.lookup(image_id, tenant=tenant)
            if embedding is not None:
                return image_id, embedding  # nothing downloaded, nothing encoded
        image = await self._download(self._url(reference, task.id))
        result = await self._state.embeddings.embed(image, tenant=tenant)
        await self._references.put(_reference_note(tenant, reference), result.image_id)
        return result.image_id, result.embedding

    @staticmethod
    def _inline(reference: str) -> bytes:
        """A ``data:image/...;base64,`` URI's bytes (the format is read from them, and
        ``ESAM_MAX_IMAGE_BYTES`` applied by the embedding service, as for ``/embed``)."""
        header, comma, _ = reference.partition(",")
        if not comma or not header.endswith(";base64") or not header.startswith("data:image/"):
            raise ImageUrlNotAllowedError(
                "image data URI: only data:image/<type>;base64,<bytes> is read"
            )
        return decode_base64_image(reference, "image data URI")

    def _url(self, reference: str, task_id: int | None) -> str:
        if reference.startswith(("http://", "https://")):
            return reference
        if self._credentials is None:
            raise ImageUrlNotAllowedError(
                f"image {reference!r} is Label Studio's: set ESAM_LABEL_STUDIO_URL "
                "(and ESAM_LABEL_STUDIO_API_KEY) so the service can fetch it"
            )
        if reference.startswith("/"):
            return self._credentials.resolve(reference)
        if reference.startswith(PRESIGNED_SCHEMES) and isinstance(task_id, int):
            uri = base64.urlsafe_b64encode(reference.encode()).decode()
            return self._credentials.resolve(f"/tasks/{task_id}/presign/?fileuri={uri}")
        raise ImageUrlNotAllowedError(
            f"image reference {reference!r}: not a URL the service fetches"
        )

    async def _download(self, url: str) -> bytes:
        owned = self._credentials is not None and self._credentials.owns(httpx.URL(url))
        for attempt in range(2):
            headers = await self._credentials.headers() if owned and self._credentials else {}
            try:
                return await self._fetcher.get(url, headers)
            except UpstreamStatusError as exc:
                if exc.upstream_status != 401 or not owned or attempt or self._credentials is None:
                    raise
                self._credentials.forget()  # an expired access token: exchange the PAT again
        raise AssertionError("unreachable")
