"""The local stack for load runs: a local Triton (CPU) and gateway processes sharing Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.gateway_process import GatewayProcess
from devtools.redis_server import free_port
from devtools.triton import LocalTriton


@dataclass(frozen=True)
class Stack:
    triton: LocalTriton
    gateways: list[GatewayProcess]
    #: the Redis key prefix the gateways share (fresh per stack: one cache, nothing stale)
    key_prefix: str


@contextlib.contextmanager
def local_stack(
    workdir: Path,
    checkpoint: str,
    *,
    redis_url: str,
    replicas: int = 1,
    embedding_dtype: str = "int8",
) -> Iterator[Stack]:
    """Start Triton, then ``replicas`` gateways (``ESAM_ENCODER=triton``, Redis cache); stop all."""
    triton = LocalTriton(
        workdir,
        checkpoint,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=workdir / "triton.log",
    )
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    gateways = [
        GatewayProcess(
            {
                "ESAM_CHECKPOINT": checkpoint,
                "ESAM_ENCODER": "triton",
                "ESAM_TRITON_URL": triton.grpc_url,
                "ESAM_CACHE": "redis",
                "ESAM_REDIS_URL": redis_url,
                "ESAM_REDIS_KEY_PREFIX": prefix,
                "ESAM_ENCODE_TIMEOUT_S": "300",
                "ESAM_EMBEDDING_DTYPE": embedding_dtype,
            }
        )
        for _ in range(replicas)
    ]
    try:
        triton.start()
        for gateway in gateways:
            gateway.start()
        yield Stack(triton, gateways, prefix)
    finally:
        for gateway in gateways:
            gateway.stop()
        triton.stop()
