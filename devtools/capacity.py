"""The capacity model: from a workload and measured unit costs to the resources it needs.

Pure arithmetic, no I/O; ``bench/capacity.py`` prints its tables and checks it
against a measured local run, ``docs/capacity.md`` explains every term.

A workload is annotators opening images and clicking on them. Per second::

    opens    = annotators / seconds_per_image
    encodes  = opens × (1 − revisit_fraction)     (a revisit within the keep time hits the cache)
    prompts  = opens × prompts_per_image

Each resource's *demand* is what that traffic keeps busy (GPU-seconds per
second, gateway core-seconds per second, bytes kept, bytes per second); a
resource's *units* are its demand over one unit's capacity at the target
utilisation, rounded up. The resource that binds first is the one with the
largest demand per unit of capacity: it is the first to need a second unit as
the load grows, and the one that sets the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.core.embedding import EMBEDDING_DTYPES, EMBEDDING_SHAPE, Embedding, EmbeddingDtype

MiB = 1 << 20
GiB = 1 << 30
#: what Redis allocates for one embedding record, by ESAM_EMBEDDING_DTYPE (``MEMORY
#: USAGE``, measured by ``bench/embedding_dtypes.py`` and ``bench/capacity.py --check``):
#: each record is a little more than 1, 2 or 4 MiB, and lands in jemalloc's next size
#: class, 1.25 times that
REDIS_BYTES_PER_EMBEDDING: dict[EmbeddingDtype, float] = {
    "int8": 1.25 * MiB,
    "float16": 2.5 * MiB,
    "float32": 5 * MiB,
}
#: the record's own bytes, by dtype: what a Redis read or write moves
RECORD_BYTES: dict[EmbeddingDtype, int] = {
    dtype: Embedding.from_array(np.zeros(EMBEDDING_SHAPE, np.float32), 1, 1, dtype).nbytes
    for dtype in EMBEDDING_DTYPES
}
#: what Triton sends back per encode: the ensemble's FP16 output (the gateway quantises it)
ENCODER_OUTPUT_BYTES = 2 * MiB
#: allowance for fragmentation, replication and client buffers over what Redis allocates
REDIS_OVERHEAD = 1.15


@dataclass(frozen=True)
class Workload:
    annotators: int
    seconds_per_image: float = 60.0
    prompts_per_image: float = 12.0
    #: image opens that return to an image still cached (no encode)
    revisit_fraction: float = 0.2
    #: how long embeddings are kept for revisits (≤ ESAM_CACHE_TTL_S)
    keep_s: float = 3600.0
    image_bytes: int = 500_000
    #: one /segment answer (RLE of a smooth mask, gzip): a few kB
    response_bytes: int = 8_000
    #: prompts whose embedding the gateway reads from Redis (not in its L1): ~1 with
    #: many replicas and no affinity, ~1/prompts_per_image with affinity
    redis_reads_per_prompt: float = 1.0

    @property
    def opens_per_s(self) -> float:
        return self.annotators / self.seconds_per_image

    @property
    def encodes_per_s(self) -> float:
        return self.opens_per_s * (1.0 - self.revisit_fraction)

    @property
    def prompts_per_s(self) -> float:
        return self.opens_per_s * self.prompts_per_image


@dataclass(frozen=True)
class UnitCosts:
    """Measured (or stated) capacity of one unit of each resource."""

    gpu: str
    #: encoder throughput of one GPU, images/s (Triton, dynamic batching)
    encoder_images_per_s: float
    #: gateway CPU per /segment prompt: with the gateway's decoder, the decoder, upsampling
    #: to full size and RLE; with the Triton decoder, the request and COCO strings
    decode_core_s: float
    #: prompts/s one GPU decodes (ESAM_DECODER=triton); 0: the gateway decodes (no GPU time)
    decoder_gpu_prompts_per_s: float = 0.0
    #: gateway CPU per /embed on the Triton path: hashing, header, gRPC, cache writes
    #: (19 ms measured, docs/benchmarks.md "Triton bytes path")
    upload_core_s: float = 0.019
    #: one cached record (ESAM_EMBEDDING_DTYPE, int8 by default): Redis writes and reads
    embedding_bytes: int = RECORD_BYTES["int8"]
    redis_bytes_per_embedding: float = REDIS_BYTES_PER_EMBEDDING["int8"]
    #: one embedding from Triton to a gateway
    encoder_output_bytes: int = ENCODER_OUTPUT_BYTES
    cores_per_gateway: int = 4
    redis_node_memory_bytes: float = 64 * GiB
    #: one Redis node's network, bytes/s (25 Gbit/s)
    redis_node_bandwidth: float = 25e9 / 8
    #: one GPU node's network, bytes/s (embeddings back to the gateways)
    gpu_node_bandwidth: float = 100e9 / 8
    gpus_per_node: int = 8
    #: headroom for bursts: plan every resource to this fraction of its capacity
    utilisation: float = 0.7


@dataclass(frozen=True)
class Demand:
    """What a workload keeps busy, per second (memory: bytes held)."""

    gpu_s: float  # GPU-seconds per second = GPUs fully busy
    gateway_core_s: float  # core-seconds per second = cores fully busy
    redis_bytes: float
    redis_bytes_per_s: float  # writes of new embeddings + reads of prompts
    gpu_egress_bytes_per_s: float  # embeddings from Triton to the gateways
    gpu_ingress_bytes_per_s: float  # image files from the gateways to Triton
    client_bytes_per_s: float  # uploads in + answers out at the gateways


def demand(workload: Workload, costs: UnitCosts) -> Demand:
    encodes, prompts = workload.encodes_per_s, workload.prompts_per_s
    embedding = costs.embedding_bytes
    return Demand(
        gpu_s=encodes / costs.encoder_images_per_s
        + (prompts / costs.decoder_gpu_prompts_per_s if costs.decoder_gpu_prompts_per_s else 0.0),
        gateway_core_s=prompts * costs.decode_core_s + encodes * costs.upload_core_s,
        redis_bytes=encodes * workload.keep_s * costs.redis_bytes_per_embedding * REDIS_OVERHEAD,
        redis_bytes_per_s=(encodes + prompts * workload.redis_reads_per_prompt) * embedding,
        gpu_egress_bytes_per_s=encodes * costs.encoder_output_bytes,
        gpu_ingress_bytes_per_s=encodes * workload.image_bytes,
        client_bytes_per_s=workload.opens_per_s * workload.image_bytes
        + prompts * workload.response_bytes,
    )


@dataclass(frozen=True)
class Resource:
    name: str
    demand: float  # in units of one unit's capacity (1.0 = one unit fully busy)
    units: int  # at the target utilisation


@dataclass(frozen=True)
class Plan:
    workload: Workload
    costs: UnitCosts
    demand: Demand
    resources: tuple[Resource, ...]

    def units(self, name: str) -> int:
        return next(r.units for r in self.resources if r.name == name)

    @property
    def binding(self) -> Resource:
        """The resource with the most demand per unit: the first to need another unit."""
        return max(self.resources, key=lambda r: r.demand)

    @property
    def redis_nodes(self) -> int:
        return max(self.units("redis memory"), self.units("redis network"))


def _units(load: float, utilisation: float) -> int:
    # a tiny epsilon keeps 2.0000000001 (float noise) from becoming 3
    return max(1, math.ceil(load / utilisation - 1e-9))


def plan(workload: Workload, costs: UnitCosts) -> Plan:
    need = demand(workload, costs)
    per_unit = {
        "GPU": need.gpu_s,
        "gateway CPU": need.gateway_core_s / costs.cores_per_gateway,
        "redis memory": need.redis_bytes / costs.redis_node_memory_bytes,
        "redis network": need.redis_bytes_per_s / costs.redis_node_bandwidth,
        "GPU node network": need.gpu_egress_bytes_per_s
        / (costs.gpu_node_bandwidth / costs.gpus_per_node),
    }
    resources = tuple(
        Resource(name, load, _units(load, costs.utilisation)) for name, load in per_unit.items()
    )
    return Plan(workload, costs, need, resources)


def saturated_opens_per_s(workload: Workload, costs: UnitCosts, cores: float) -> float:
    """Image opens per second one machine sustains when Triton and the gateway share its cores.

    The local check's case: a closed-loop load (no think time) on one machine,
    where the encoder's and the decoder's CPU time add up. ``encoder_images_per_s``
    and ``decode_core_s`` are then measured on that machine.
    """
    per_open = workload.prompts_per_image * costs.decode_core_s + costs.upload_core_s
    per_open += (1.0 - workload.revisit_fraction) * cores / costs.encoder_images_per_s
    return cores / per_open
