"""One Triton server (one address): its client, its circuit breaker, one inference call.

The ``efficientsam`` ensemble takes each new image as the file's bytes (one ``BYTES``
element): decoding and resizing run beside the encoder (``efficientsam_preprocess``),
so the gateway sends the file's size plus a few bytes of framing, not a 6-12 MiB
tensor, and gets back the embedding and the upright size.

:meth:`TritonEndpoint.infer` classifies every outcome by the client library's status
codes (never by message text) and gives the call's breaker its verdict: Triton
answered (success, even when the answer is an error about this request: an image it
cannot decode is ``INVALID_ARG`` → :class:`InvalidImageError`), it could not be
reached (:class:`UnreachableError`, failure), or the deadline passed (``TimeoutError``,
failure). Choosing among endpoints and retrying elsewhere is ``TritonEncoder``'s job
(``encoders/triton.py``), for the decoder too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype
from tritonclient.utils.shared_memory import SharedMemoryException

from service.core.circuit import BreakerState, Call, CircuitBreaker
from service.core.embedding import EMBEDDING_SHAPE
from service.core.encoders.base import EncodedImage
from service.core.encoders.triton_shm import OutputRegion, OutputRegions
from service.core.metrics import Metrics
from service.core.request_context import current_request_id
from service.core.tenancy import current_rank
from service.core.tracing import trace_headers
from service.errors import EncoderUnavailableError, InvalidImageError

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "embeddings"
SIZE_NAME = "size"
IMAGE_EMBEDDING_SHAPE = EMBEDDING_SHAPE[1:]  # one image's: Triton's batch dimension dropped
_GRPC_CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]
#: Triton's answer that the request's input is unusable: for a BYTES image, one that passed
#: the gateway's header checks but does not decode.
_INVALID_INPUT_STATUS = frozenset({"StatusCode.INVALID_ARGUMENT", "400"})
#: Status codes (as ``InferenceServerException.status()`` gives them) that mean "Triton,
#: or its model, is not there": retried once and counted by the circuit breaker. NOT_FOUND
#: is what a Triton that is shutting down (or still loading) answers. Every other status is
#: Triton's answer about this one request.
_UNREACHABLE_STATUS = frozenset(
    {
        "StatusCode.UNAVAILABLE",
        "StatusCode.NOT_FOUND",
        "StatusCode.UNKNOWN",  # the channel broke mid-call
        "404",
        "502",
        "503",
        "504",
    }
)


def invalid_input(exc: BaseException) -> bool:
    return isinstance(exc, InferenceServerException) and str(exc.status()) in _INVALID_INPUT_STATUS


def _answered(exc: BaseException) -> bool:
    """Triton answered the call (with an error about it), so it is done with the call."""
    return isinstance(exc, InferenceServerException) and (
        invalid_input(exc) or not unreachable(exc)
    )


def message_of(exc: BaseException) -> str:
    return str(exc.message()) if isinstance(exc, InferenceServerException) else str(exc)


def unreachable(exc: BaseException) -> bool:
    """True for failures to reach the server (safe to retry; counts against the circuit)."""
    if isinstance(exc, InferenceServerException):
        return str(exc.status()) in _UNREACHABLE_STATUS
    # transport errors of the HTTP client (aiohttp's are OSError subclasses) and of gRPC
    return isinstance(exc, OSError | ConnectionError) or type(exc).__module__.startswith(
        ("aiohttp", "grpc")
    )


class UnreachableError(Exception):
    """The call did not reach Triton (or its model): safe to send elsewhere."""


class TritonEndpoint:
    """One Triton address (``host:port``) with its own client and circuit breaker."""

    def __init__(
        self,
        address: str,
        *,
        protocol: str,
        model_name: str,
        metrics: Metrics,
        probe_timeout_s: float = 2.0,
        shared_memory: bool = False,
        on_state_change: Callable[[], None] | None = None,
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"unknown Triton protocol {protocol!r} (grpc or http)")
        self.address = address
        self.shared_memory = shared_memory
        self.protocol = protocol
        self.model_name = model_name
        self.probe_timeout_s = probe_timeout_s
        self._metrics = metrics
        self.breaker = CircuitBreaker(
            on_change=(lambda _: on_state_change()) if on_state_change else None
        )
        self.outstanding = 0  # calls in flight here (least-outstanding balancing)
        self._client: Any = None
        self._model_checked = False
        self._output_dtype: np.dtype[Any] = np.dtype(np.float16)
        self._regions: OutputRegions | None = None  # created once the output's dtype is known

    @property
    def client(self) -> Any:
        """This address's tritonclient (gRPC or HTTP, asyncio), shared by every model's calls."""
        return self._client

    # --- lifecycle --------------------------------------------------------------------------
    def _new_client(self) -> Any:
        if self.protocol == "grpc":
            # reconnect within a second once Triton is back (gRPC's default backoff reaches 120 s)
            return grpcclient.InferenceServerClient(self.address, channel_args=_GRPC_CHANNEL_ARGS)
        # tritonclient's conn_timeout is aiohttp's *total* timeout of every call, an encode
        # included (2 s here cut encodes that queued a little short, as 503 "timeouts");
        # the deadlines are ours: ESAM_ENCODE_TIMEOUT_S per encode, probe_timeout_s per probe
        return httpclient.InferenceServerClient(self.address, conn_timeout=None)

    async def start(self) -> None:
        self._client = self._new_client()  # one client, its connections reused

    async def close(self) -> None:
        if self._client is not None:
            if self._regions is not None:
                await self._regions.close(self._client)
            await self._client.close()
            self._client = None

    async def ready(self) -> bool:
        """Triton's model readiness. A ready model also closes an open circuit at once."""
        try:
            ready = bool(
                await asyncio.wait_for(
                    self._client.is_model_ready(self.model_name), self.probe_timeout_s
                )
            )
        except (TimeoutError, InferenceServerException, OSError) as exc:
            log.debug("triton readiness probe failed: %s", exc)
            return False
        except Exception as exc:  # aiohttp / grpc transport errors
            log.debug("triton readiness probe failed: %s", exc)
            return False
        if ready and self.breaker.state is not BreakerState.CLOSED:
            log.info("triton at %s is ready again: closing its circuit", self.address)
        if ready:
            self.breaker.probe_succeeded()
        return ready

    def forget_model_check(self) -> None:
        """The server may have restarted (another model's call failed to reach it): check
        the encoder's model, and register shared memory again, on the next encode."""
        self._model_checked = False

    async def _check_model(self) -> None:
        """Once per connection: the model must take the image file's bytes."""
        if self._model_checked:
            return
        metadata = await self._client.get_model_metadata(self.model_name)
        inputs, outputs = (
            (metadata["inputs"], metadata["outputs"])
            if isinstance(metadata, dict)
            else (metadata.inputs, metadata.outputs)
        )
        tensors = {
            (t["name"] if isinstance(t, dict) else t.name): (
                t["datatype"] if isinstance(t, dict) else t.datatype
            )
            for t in (*inputs[:1], *outputs)
        }
        if tensors.get(INPUT_NAME) != "BYTES" or OUTPUT_NAME not in tensors:
            raise EncoderUnavailableError(
                f"the Triton model {self.model_name!r} has {tensors}; the gateway sends images "
                f"as bytes to the 'efficientsam' ensemble (ESAM_TRITON_MODEL)"
            )
        self._output_dtype = np.dtype(triton_to_np_dtype(tensors[OUTPUT_NAME]))
        if self.shared_memory:
            byte_size = int(np.prod(IMAGE_EMBEDDING_SHAPE)) * self._output_dtype.itemsize
            if self._regions is None or self._regions.byte_size != byte_size:
                if self._regions is not None:
                    await self._regions.close(self._client)
                self._regions = OutputRegions(byte_size)
            self._regions.forget_registrations()  # a new connection: Triton may be new too
        self._model_checked = True

    # --- inference --------------------------------------------------------------------------
    async def _output_region(self, regions: OutputRegions) -> OutputRegion | None:
        """A region of ``regions`` for this call's embedding, or None: in the answer."""
        try:
            return await regions.acquire(self._client)
        except SharedMemoryException as exc:  # e.g. /dev/shm is full: this call goes without
            log.warning("no shared-memory region for this call (%s): %s", exc, exc.__cause__)
            return None
        except InferenceServerException as exc:
            if unreachable(exc):
                raise
            if self._regions is regions:  # the first call to hear it (others may, too)
                # Triton answered that it cannot map our memory: it is not on this host, or
                # does not share its /dev/shm. Embeddings come in the answers from now on.
                log.error(
                    "triton at %s cannot use this process's shared memory (%s): embeddings "
                    "come in its answers instead; run Triton on the same host with a shared "
                    "/dev/shm, or unset ESAM_TRITON_SHARED_MEMORY",
                    self.address,
                    message_of(exc),
                )
                self.shared_memory = False
                self._regions = None
            await regions.close(self._client)  # this call's region too, whoever came first
            return None

    def _request(self, data: bytes, region: OutputRegion | None = None) -> tuple[Any, list[Any]]:
        module: Any = grpcclient if self.protocol == "grpc" else httpclient
        infer_input = module.InferInput(INPUT_NAME, [1, 1], "BYTES")
        image = np.array([[data]], dtype=np.object_)
        options = {"binary_data": True} if self.protocol == "http" else {}
        infer_input.set_data_from_numpy(image, **options)
        outputs = [module.InferRequestedOutput(n, **options) for n in (OUTPUT_NAME, SIZE_NAME)]
        if region is not None:
            outputs[0].set_shared_memory(region.name, region.byte_size)
        return infer_input, outputs

    async def _infer_once(self, data: bytes) -> EncodedImage:
        await self._check_model()
        regions = self._regions  # the pool this call's region comes from and goes back to
        region = await self._output_region(regions) if regions is not None else None
        infer_input, outputs = self._request(data, region)
        try:
            result = await self._client.infer(
                self.model_name,
                [infer_input],
                outputs=outputs,
                # the gateway request that started this encode, in Triton's log and traces
                request_id=current_request_id(default=""),
                headers=trace_headers() or None,
                # bulk work queues behind annotators' in Triton's batcher (priority_levels)
                priority=current_rank(),
            )
        except BaseException as exc:
            if regions is not None and region is not None:
                if _answered(exc):
                    regions.release(region)
                else:  # no answer: Triton may still write into it
                    regions.retire(region)
            raise
        if regions is not None and region is not None:
            embedding = region.read(self._output_dtype, IMAGE_EMBEDDING_SHAPE)
            regions.release(region)
        else:
            embedding = result.as_numpy(OUTPUT_NAME)
        size = result.as_numpy(SIZE_NAME)
        if embedding is None or size is None:
            raise EncoderUnavailableError("Triton returned no embedding")
        width, height = (int(v) for v in size.reshape(-1)[:2])
        # kept in the dtype it came in (FP16 in production: what the cache stores by default)
        return EncodedImage(embedding.reshape(IMAGE_EMBEDDING_SHAPE), width, height)

    async def infer(self, data: bytes, timeout_s: float, call: Call) -> EncodedImage:
        """One call within ``timeout_s``; ``call`` (from ``self.breaker``) gets its verdict."""
        self.outstanding += 1
        start = time.perf_counter()
        try:
            out = await asyncio.wait_for(self._infer_once(data), max(0.001, timeout_s))
        except TimeoutError:
            call.failure()
            raise
        except EncoderUnavailableError:
            call.success()  # Triton answered, with something unusable
            raise
        except Exception as exc:
            if invalid_input(exc):
                call.success()  # Triton answered: this image does not decode
                raise InvalidImageError(
                    f"the image could not be decoded: {message_of(exc)}"
                ) from exc
            if not unreachable(exc):
                # Triton answered with an error about this request: not retried, and no
                # reason to stop sending it others
                call.success()
                self._metrics.encoder_errors.labels("request").inc()
                log.warning("triton at %s failed this request: %s", self.address, exc)
                raise EncoderUnavailableError(
                    "the encoder failed on this request", retry_after_s=1
                ) from exc
            self._model_checked = False  # the server may come back with another config
            # (and without our shared-memory regions: they are registered again)
            call.failure()
            raise UnreachableError(f"{self.address}: {type(exc).__name__}: {exc}") from exc
        else:
            call.success()
            # batch sizes are Triton's business: nv_inference_exec_count vs request_success
            self._metrics.encoder_duration.observe(time.perf_counter() - start)
            return out
        finally:
            self.outstanding -= 1
            call.abandon()  # cancelled: no verdict (a no-op after the verdicts above)
