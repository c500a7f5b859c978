"""The encoder in NVIDIA Triton Inference Server, over one or several Triton servers.

``ESAM_TRITON_URL`` is one or more comma-separated ``grpc://host:port`` (default
scheme) or ``http://host:port``. A host that is a name is resolved to *all* its
addresses and re-resolved every ``ESAM_TRITON_RESOLVE_S`` (a Kubernetes headless
Service: one address per Triton pod), so Triton pods the autoscaler adds get
traffic from running gateways: gRPC keeps one long-lived HTTP/2 connection per
address, and balancing happens here, per request, not per connection.

Each request goes to the endpoint with the fewest calls in flight (ties in
turn) among those whose circuit breaker lets a call through. A request that
could not reach its endpoint is sent once more, to another endpoint when there
is one, within the same deadline (encoding is idempotent); a timeout is not
retried (the deadline is spent). When every endpoint's circuit is open, requests
get ``encoder_unavailable`` (503, ``Retry-After``) at once and each endpoint is
probed for readiness in the background (at most every 0.5 s); a ready Triton
closes its circuit without waiting out the cool-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import socket
import time

from service.core.circuit import BreakerState, Call
from service.core.encoders.base import EncodedImage
from service.core.encoders.triton_endpoint import TritonEndpoint, UnreachableError
from service.core.encoders.triton_targets import parse_targets
from service.core.metrics import Metrics
from service.errors import EncoderUnavailableError
from service.model.preprocess import ImageHeader

log = logging.getLogger(__name__)

_PROBE_INTERVAL_S = 0.5


#: how many more calls in flight than the least busy endpoint make one "far busier"
LOAD_GUARD_CALLS = 16


def _weight(key: str, address: str) -> int:
    """Rendezvous (highest random weight) score of ``address`` for ``key``."""
    digest = hashlib.blake2b(f"{key}|{address}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TritonEncoder:
    name = "triton"

    def __init__(
        self,
        urls: str,
        *,
        model_name: str,
        timeout_s: float,
        metrics: Metrics,
        resolve_s: float = 10.0,
        probe_timeout_s: float = 2.0,
        shared_memory: bool = False,
    ) -> None:
        self.targets = parse_targets(urls)
        self.shared_memory = shared_memory
        self.protocol = self.targets[0].protocol
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.resolve_s = resolve_s
        self.probe_timeout_s = probe_timeout_s
        self._metrics = metrics
        self.endpoints: dict[str, TritonEndpoint] = {}
        self._turn = itertools.count()
        self._resolver: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[list[bool]] | None = None
        self._last_probe = 0.0

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        await self.resolve()
        if not all(t.is_address for t in self.targets):
            self._resolver = asyncio.create_task(self._keep_resolving(), name="triton resolver")

    async def close(self) -> None:
        for task in (self._resolver, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(*(e.close() for e in self.endpoints.values()))
        self.endpoints.clear()

    async def ready(self) -> bool:
        """Ready when any endpoint's model is ready; each ready one closes its circuit."""
        if not self.endpoints:
            return False
        return any(await asyncio.gather(*(e.ready() for e in list(self.endpoints.values()))))

    # --- endpoints ----------------------------------------------------------------------------
    async def _addresses(self) -> set[str]:
        loop = asyncio.get_running_loop()
        found: set[str] = set()
        for target in self.targets:
            if target.is_address:
                found.add(_address(target.host, target.port))
                continue
            try:
                infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("cannot resolve Triton host %s: %s", target.host, exc)
                continue
            found.update(_address(str(info[4][0]), target.port) for info in infos)
        return found

    async def resolve(self) -> None:
        """Match the endpoints to what the targets resolve to now (a failed lookup keeps all)."""
        addresses = await self._addresses()
        if not addresses:
            return
        for address in sorted(addresses - set(self.endpoints)):
            endpoint = TritonEndpoint(
                address,
                protocol=self.protocol,
                model_name=self.model_name,
                metrics=self._metrics,
                probe_timeout_s=self.probe_timeout_s,
                shared_memory=self.shared_memory,
                on_state_change=self._report,
            )
            await endpoint.start()
            self.endpoints[address] = endpoint
            log.info("triton endpoint added: %s", address)
        for address in sorted(set(self.endpoints) - addresses):
            endpoint = self.endpoints.pop(address)
            log.info("triton endpoint removed: %s", address)
            await endpoint.close()  # its calls in flight fail and are sent elsewhere
        self._report()

    async def _keep_resolving(self) -> None:
        while True:
            await asyncio.sleep(self.resolve_s)
            await self.resolve()

    def _report(self) -> None:
        states = [e.breaker.state for e in self.endpoints.values()]
        for state in BreakerState:
            self._metrics.triton_endpoints.labels(state.name.lower()).set(states.count(state))
        # the encoder as a whole: as good as its best endpoint
        best = min(states, default=BreakerState.OPEN)
        self._metrics.encoder_circuit_state.set(best.value)

    def _pick(self, avoid: set[str]) -> tuple[TritonEndpoint, Call] | None:
        """Fewest calls in flight first, ties in turn; skips endpoints whose circuit is open."""
        endpoints = list(self.endpoints.values())
        if not endpoints:
            return None
        turn = next(self._turn) % len(endpoints)
        rotated = endpoints[turn:] + endpoints[:turn]
        preferred = [e for e in rotated if e.address not in avoid] or rotated
        for endpoint in sorted(preferred, key=lambda e: e.outstanding):
            call = endpoint.breaker.acquire()
            if call is not None:
                return endpoint, call
        return None

    def pick_for(self, key: str, avoid: set[str]) -> tuple[TritonEndpoint, Call] | None:
        """The endpoint that serves ``key`` (an image id): rendezvous hashing over the
        endpoints whose circuit lets a call through, so all of one image's calls go to one
        Triton (its resident embedding) and a lost or added endpoint moves only its share.

        Load guard: an endpoint with ``LOAD_GUARD_CALLS`` more calls in flight than the
        least busy one, and more than twice as many, is passed over for the next in hash
        order (as SGLang's cache-aware router falls back to the shortest queue).
        """
        endpoints = [e for e in self.endpoints.values() if e.address not in avoid]
        if not endpoints:
            endpoints = list(self.endpoints.values())
        least = min((e.outstanding for e in endpoints), default=0)
        ranked = sorted(endpoints, key=lambda e: _weight(key, e.address), reverse=True)
        guarded = [
            e
            for e in ranked
            if e.outstanding < least + LOAD_GUARD_CALLS or e.outstanding <= 2 * least
        ]
        for endpoint in guarded + [e for e in ranked if e not in guarded]:
            call = endpoint.breaker.acquire()
            if call is not None:
                return endpoint, call
        return None

    def retry_after_s(self) -> int:
        waits = [e.breaker.retry_after_s() for e in self.endpoints.values()]
        return min(waits, default=2)

    def probe_soon(self) -> None:
        now = time.monotonic()
        if self._probe is not None and not self._probe.done():
            return
        if now - self._last_probe < _PROBE_INTERVAL_S:
            return
        self._last_probe = now
        self._probe = asyncio.create_task(self._probe_all(), name="triton readiness probes")

    async def _probe_all(self) -> list[bool]:
        return list(await asyncio.gather(*(e.ready() for e in list(self.endpoints.values()))))

    # --- inference ----------------------------------------------------------------------------
    async def encode(self, data: bytes, header: ImageHeader) -> EncodedImage:
        """One encode within ``timeout_s`` (the only deadline on this path)."""
        deadline = time.monotonic() + self.timeout_s
        tried: set[str] = set()
        for attempt in (1, 2):
            picked = self._pick(avoid=tried)
            if picked is None:
                self._metrics.encoder_errors.labels("circuit_open").inc()
                self.probe_soon()
                raise EncoderUnavailableError(
                    "the encoder is unavailable (every Triton circuit is open after repeated "
                    "failures)",
                    retry_after_s=self.retry_after_s(),
                )
            endpoint, call = picked
            try:
                return await endpoint.infer(data, deadline - time.monotonic(), call)
            except TimeoutError as exc:
                self._metrics.encoder_errors.labels("timeout").inc()
                raise EncoderUnavailableError(
                    f"the encoder did not answer within {self.timeout_s:g}s"
                ) from exc
            except UnreachableError as exc:
                tried.add(endpoint.address)
                if attempt == 1 and deadline - time.monotonic() > 0.1:
                    log.info("retrying elsewhere after %s", exc)
                    if len(self.endpoints) == 1:
                        await asyncio.sleep(0.05)  # the only one: a moment before trying again
                    continue
                self._metrics.encoder_errors.labels("unreachable").inc()
                raise EncoderUnavailableError(
                    "the encoder (Triton) is unreachable", retry_after_s=self.retry_after_s()
                ) from exc
        raise AssertionError("unreachable")  # the loop returns or raises
