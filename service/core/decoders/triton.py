"""The mask decoder in Triton (``efficientsam_decoder``), embeddings resident on its device.

Each click names its image (``<model id>/<image id>/<record dtype>``) and sends only its
prompts;
the embedding (2 MiB in FP16, 1 MiB in int8) travels only when the decoder answers "not resident"
(status 1: a new image, another endpoint after a failure, an eviction, a restarted
Triton), and then once. Triton decodes the prompts of every request in one execution
together and answers scores and COCO run lengths; here they become compressed RLE.

Every call for one image goes to the endpoint rendezvous hashing picks for its id
(``TritonEncoder.pick_for``: the same endpoints, breakers and probes as the encoder's),
so its embedding stays where its clicks go. A call that cannot reach its endpoint is
sent once to the next one in hash order within the same deadline (decoding is
idempotent, and the embedding goes along when that one lacks it); a timeout is not
retried. At most ``max_pending`` calls wait on Triton per gateway: beyond, 429 at once.

Segment everything and edge detection run on the in-process decoder (``fallback``): their
stability scores and Sobel filters need every candidate's full-size logits, which this
model does not return. A click
that Triton cannot take (unreachable, every circuit open, past the deadline: a restart,
an outage) is decoded by that decoder too while one of its threads is free
(``ESAM_DECODER_FALLBACK``, on by default; ``esam_decoder_fallbacks_total``), else it
gets 503 ``decoder_unavailable`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient
from numpy.typing import NDArray
from tritonclient.utils import np_to_triton_dtype

from service.core.circuit import Call
from service.core.decoders.base import Candidate, DecodeRequest
from service.core.decoders.local import LocalDecoder
from service.core.edges import EDGE_STEPS, EdgeMap, EdgeParams
from service.core.embedding import Embedding
from service.core.encoders.triton import TritonEncoder
from service.core.encoders.triton_endpoint import (
    TritonEndpoint,
    UnreachableError,
    message_of,
    unreachable,
)
from service.core.everything import Box, EverythingParams, Proposal
from service.core.metrics import Metrics
from service.core.request_context import current_request_id
from service.core.tenancy import current_rank
from service.core.tracing import trace_headers, tracer
from service.errors import DecoderUnavailableError, OverloadedError
from service.model.masks import compress_rle, counts_area_bbox

log = logging.getLogger(__name__)

NOT_RESIDENT = 1
OTHER_MODEL = 3  # an identity probe's answer: the decoder holds another checkpoint
#: prompts per Triton request (the model's max_prompts_per_request)
PROMPTS_PER_REQUEST = 64
_OUTPUTS = ("status", "scores", "rle_lengths", "rle_counts")
_LOGITS = "low_res_logits"
#: an edge request's outputs (edge_seconds: EDGE_STEPS, in order)
_EDGE_OUTPUTS = ("status", "edges", "edge_counts", "edge_seconds")


@dataclass(frozen=True)
class _Part:
    """What one Triton request asks: prompts ``first:last`` of ``request``, or (``edges``)
    the image's edge map."""

    request: DecodeRequest
    first: int
    last: int
    edges: EdgeParams | None = None


def embedding_inputs(embedding: Embedding) -> dict[str, NDArray[Any]]:
    """The embedding as the decoder keeps it: int8 records as they are (values and their
    scales: 1 MiB), float records as FP16 (2 MiB)."""
    if embedding.scales is not None:
        return {"embedding_int8": embedding.array, "embedding_scales": embedding.scales[None]}
    return {"embedding": embedding.array.astype(np.float16, copy=False)}


class TritonDownError(DecoderUnavailableError):
    """Triton could not be used for this click (unreachable, every circuit open, past the
    deadline): the click may be decoded here instead. Not raised when Triton *answered*
    with an error about the click (another checkpoint, a malformed request)."""


class TritonDecoder:
    name = "triton"

    def __init__(
        self,
        pool: TritonEncoder,
        *,
        model_id: str,
        model_name: str,
        timeout_s: float,
        job_timeout_s: float,
        max_pending: int,
        metrics: Metrics,
        fallback: LocalDecoder,
        owns_pool: bool,
        use_fallback: bool = True,
    ) -> None:
        self._pool = pool
        self._model_id = model_id
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.job_timeout_s = job_timeout_s
        self._max_pending = max_pending
        self._pending = 0
        self._metrics = metrics
        self._fallback = fallback
        self._use_fallback = use_fallback
        self._owns_pool = owns_pool
        self._module: Any = grpcclient if pool.protocol == "grpc" else httpclient
        #: set by ``ready`` when an endpoint holds another checkpoint (both named)
        self.mismatch: str | None = None

    @property
    def everything_jobs_running(self) -> int:
        return self._fallback.everything_jobs_running

    async def start(self) -> None:
        if self._owns_pool:
            await self._pool.start()

    async def close(self) -> None:
        await self._fallback.close()
        if self._owns_pool:
            await self._pool.close()

    async def ready(self) -> bool:
        """Some endpoint is ready, and every endpoint that answers holds this gateway's
        checkpoint (an identity probe each; ``mismatch`` names both models otherwise)."""
        if not await self._pool.ready():
            return False
        endpoints = list(self._pool.endpoints.values())
        found = await asyncio.gather(*(self._identity(e) for e in endpoints))
        wrong = [
            f"{e.address} holds {model}*"
            for e, model in zip(endpoints, found, strict=True)
            if model
        ]
        self.mismatch = (
            f"decoder model mismatch: this gateway serves {self._model_id}; " + ", ".join(wrong)
            if wrong
            else None
        )
        if self.mismatch:
            log.error("%s", self.mismatch)
        return self.mismatch is None

    async def _identity(self, endpoint: TritonEndpoint) -> str | None:
        """The endpoint's model when it is another than this gateway's; None when it is the
        same, or the endpoint did not answer (that is readiness's business, not identity's)."""
        inputs = self._inputs(
            {
                "points": np.zeros((1, 1, 1, 2), dtype=np.float32),
                "labels": np.ones((1, 1, 1), dtype=np.float32),
                "image_size": np.ones((1, 2), dtype=np.int32),
            }
        )
        try:
            result = await asyncio.wait_for(
                endpoint.client.infer(
                    self.model_name,
                    inputs,
                    outputs=self._outputs(("status", "model")),
                    parameters={"image": f"{self._model_id}/identity", "identity": True},
                ),
                endpoint.probe_timeout_s,
            )
        except Exception as exc:  # not answered: readiness reports it
            log.debug("decoder identity probe at %s failed: %s", endpoint.address, exc)
            return None
        if int(result.as_numpy("status").reshape(-1)[0]) != OTHER_MODEL:
            return None
        model = result.as_numpy("model").reshape(-1)[0]
        return model.decode() if isinstance(model, bytes) else str(model)

    async def everything(
        self, crops: Sequence[tuple[Box, Embedding]], params: EverythingParams
    ) -> list[Proposal]:
        return await self._fallback.everything(crops, params)

    async def segment(self, request: DecodeRequest) -> list[list[Candidate]]:
        n = len(request.points)
        if self._pending >= self._max_pending:
            self._metrics.decoder_errors.labels("overloaded").inc()
            raise OverloadedError(
                f"{self._pending} clicks already wait on the decoder (ESAM_MAX_PENDING_DECODES)"
            )
        self._pending += 1
        start = time.perf_counter()
        try:
            with tracer.start_as_current_span("esam.decode") as span:
                span.set_attributes({"esam.prompts": n, "esam.decoder": self.name})
                chunks = [
                    self._decode(request, first, min(first + PROMPTS_PER_REQUEST, n))
                    for first in range(0, n, PROMPTS_PER_REQUEST)
                ]
                try:
                    parts = await asyncio.gather(*chunks)
                except TritonDownError:
                    if not self._use_fallback or not self._fallback.has_free_slot:
                        raise
                    # Triton is down or restarting: this click is decoded here, not failed
                    self._metrics.decoder_fallbacks.inc()
                    span.set_attribute("esam.decoder", self._fallback.name)
                    return await self._fallback.segment(request)
        finally:
            self._pending -= 1
        self._metrics.decoder_duration.observe(time.perf_counter() - start)
        self._metrics.decoder_prompts.inc(n)
        return [prompt for part in parts for prompt in part]

    async def edges(
        self, image_id: str, crops: Sequence[tuple[Box, Embedding]], params: EdgeParams
    ) -> EdgeMap:
        """Edge detection in Triton, on the resident embedding (sent once when it is not);
        with crops (their embeddings are not the image's), or when Triton cannot take it
        and ESAM_DECODER_FALLBACK allows, on the gateway's own decoder. Either way a long
        job of this replica (``ESAM_MAX_EVERYTHING_JOBS``)."""
        if len(crops) > 1:
            return await self._fallback.edges(image_id, crops, params)
        _, embedding = crops[0]
        # the request's prompt inputs are required by the model; an edge request's are unused
        request = DecodeRequest(
            image_id,
            embedding,
            np.zeros((1, 1, 2), dtype=np.float32),
            np.ones((1, 1), dtype=np.float32),
            "best",
            False,
        )
        prompts = params.points_per_side**2
        try:
            async with self._fallback.long_job(
                "edges", prompts, 1, self._metrics.edges_duration
            ) as span:
                span.set_attribute("esam.decoder", self.name)
                result = await self._answer(_Part(request, 0, 1, params))
        except TritonDownError:
            if not self._use_fallback:
                raise
            self._metrics.decoder_fallbacks.inc()
            return await self._fallback.edges(image_id, crops, params)
        candidates, masks = (int(v) for v in result.as_numpy("edge_counts").reshape(-1))
        seconds = result.as_numpy("edge_seconds").reshape(-1).tolist()
        return EdgeMap(
            strength=np.asarray(result.as_numpy("edges")[0], dtype=np.float32),
            candidates=candidates,
            masks=masks,
            seconds={
                step: s
                for step, s in zip(EDGE_STEPS, seconds, strict=True)
                if params.edge_nms or step != "thin"
            },
        )

    # --- one Triton request ----------------------------------------------------------------
    async def _decode(self, request: DecodeRequest, first: int, last: int) -> list[list[Candidate]]:
        return self._candidates(await self._answer(_Part(request, first, last)), request)

    async def _answer(self, part: _Part) -> Any:
        """One request's answer within the deadline, sent again once elsewhere."""
        request = part.request
        # the record's dtype too: a click is answered from exactly the embedding its
        # gateway holds, also while a fleet changes ESAM_EMBEDDING_DTYPE
        key = f"{self._model_id}/{request.image_id}/{request.embedding.dtype}"
        deadline = time.monotonic() + self._timeout(part)
        tried: set[str] = set()
        for attempt in (1, 2):
            picked = self._pool.pick_for(request.image_id, avoid=tried)
            if picked is None:
                self._metrics.decoder_errors.labels("circuit_open").inc()
                self._pool.probe_soon()
                raise TritonDownError(
                    "the decoder is unavailable (every Triton circuit is open after repeated "
                    "failures)",
                    retry_after_s=self._pool.retry_after_s(),
                )
            endpoint, call = picked
            try:
                result = await self._call(endpoint, call, key, part, deadline)
            except UnreachableError as exc:
                tried.add(endpoint.address)
                if attempt == 1 and deadline - time.monotonic() > 0.1:
                    log.info("decode: retrying elsewhere after %s", exc)
                    continue
                self._metrics.decoder_errors.labels("unreachable").inc()
                raise TritonDownError(
                    "the decoder (Triton) is unreachable", retry_after_s=self._pool.retry_after_s()
                ) from exc
            return result
        raise AssertionError("unreachable")  # the loop returns or raises

    def _timeout(self, part: _Part) -> float:
        return self.job_timeout_s if part.edges is not None else self.timeout_s

    async def _call(
        self,
        endpoint: TritonEndpoint,
        call: Call,
        key: str,
        part: _Part,
        deadline: float,
    ) -> Any:
        endpoint.outstanding += 1
        try:
            result = await self._infer(endpoint, key, part, None, deadline)
            if int(result.as_numpy("status").reshape(-1)[0]) == NOT_RESIDENT:
                self._metrics.decoder_embedding_sends.inc()
                result = await self._infer(endpoint, key, part, part.request.embedding, deadline)
        except TimeoutError as exc:
            call.failure()
            self._metrics.decoder_errors.labels("timeout").inc()
            raise TritonDownError(
                f"the decoder did not answer within {self._timeout(part):g}s"
            ) from exc
        except Exception as exc:
            if unreachable(exc):
                endpoint.forget_model_check()
                call.failure()
                raise UnreachableError(f"{endpoint.address}: {type(exc).__name__}: {exc}") from exc
            call.success()  # Triton answered, with an error about this request
            self._metrics.decoder_errors.labels("request").inc()
            log.warning("triton decoder at %s failed a request: %s", endpoint.address, exc)
            raise DecoderUnavailableError(
                f"the decoder failed on this request: {message_of(exc)}", retry_after_s=1
            ) from exc
        else:
            call.success()
            return result
        finally:
            endpoint.outstanding -= 1
            call.abandon()

    async def _infer(
        self,
        endpoint: TritonEndpoint,
        key: str,
        part: _Part,
        embedding: Embedding | None,
        deadline: float,
    ) -> Any:
        request, first, last = part.request, part.first, part.last
        tensors: dict[str, NDArray[Any]] = {
            "points": request.points[first:last][None].astype(np.float32, copy=False),
            "labels": request.labels[first:last][None].astype(np.float32, copy=False),
            "image_size": np.array(
                [[request.embedding.height, request.embedding.width]], dtype=np.int32
            ),
        }
        if embedding is not None:
            tensors.update(embedding_inputs(embedding))
        inputs = self._inputs(tensors)
        self._metrics.decoder_sent_bytes.inc(sum(a.nbytes for a in tensors.values()))
        names = (*_OUTPUTS, _LOGITS) if request.return_logits else _OUTPUTS
        parameters: dict[str, Any] = {"image": key, "candidates": request.candidates}
        if part.edges is not None:
            names = _EDGE_OUTPUTS
            parameters["edges"] = json.dumps(dataclasses.asdict(part.edges))
        remaining = max(0.001, deadline - time.monotonic())
        return await asyncio.wait_for(
            endpoint.client.infer(
                self.model_name,
                inputs,
                outputs=self._outputs(names),
                parameters=parameters,
                request_id=current_request_id(default=""),
                headers=trace_headers() or None,
                priority=current_rank(),
            ),
            remaining,
        )

    def _options(self) -> dict[str, bool]:
        """Tensors travel as binary over HTTP (JSON otherwise); gRPC has only one way."""
        return {"binary_data": True} if self._module is httpclient else {}

    def _inputs(self, tensors: dict[str, NDArray[Any]]) -> list[Any]:
        inputs = []
        for name, array in tensors.items():
            tensor = self._module.InferInput(
                name, list(array.shape), np_to_triton_dtype(array.dtype)
            )
            tensor.set_data_from_numpy(array, **self._options())
            inputs.append(tensor)
        return inputs

    def _outputs(self, names: Sequence[str]) -> list[Any]:
        return [self._module.InferRequestedOutput(name, **self._options()) for name in names]

    @staticmethod
    def _candidates(result: Any, request: DecodeRequest) -> list[list[Candidate]]:
        """Scores and run lengths → each prompt's candidates as compressed COCO RLE."""
        height, width = request.embedding.height, request.embedding.width
        scores = result.as_numpy("scores")[0]
        lengths = result.as_numpy("rle_lengths")[0].astype(np.int64)
        counts = result.as_numpy("rle_counts")[0]
        logits = result.as_numpy(_LOGITS)[0] if request.return_logits else None
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        per_prompt = []
        for n, prompt_scores in enumerate(scores):
            candidates = []
            for k, score in enumerate(prompt_scores):
                index = n * len(prompt_scores) + k
                runs = counts[bounds[index] : bounds[index + 1]]
                rle = compress_rle(runs, height, width)
                area, bbox = counts_area_bbox(runs, height)
                candidates.append(
                    Candidate(
                        score=float(score),
                        area=area,
                        bbox=bbox,
                        rle=rle,
                        logits=None if logits is None else np.asarray(logits[n, k], np.float32),
                    )
                )
            per_prompt.append(candidates)
        return per_prompt
