"""Prometheus metrics of one gateway process (one registry per app, so tests stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "esam_request_duration_seconds",
            "HTTP request latency by route and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("esam_requests_in_flight", "HTTP requests being served.", registry=r)
        self.cache_lookups = Counter(
            "esam_cache_lookups_total",
            "Embedding cache lookups by tier (l1, redis) and outcome (hit, miss, error).",
            ["tier", "outcome"],
            registry=r,
        )
        self.encoder_images = Counter(
            "esam_encoder_images_total", "Images encoded by the image encoder.", registry=r
        )
        self.encoder_duration = Histogram(
            "esam_encoder_duration_seconds",
            "Encoder latency per batch (queueing excluded).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.encoder_batch_size = Histogram(
            "esam_encoder_batch_size",
            "Images per encoder call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.encoder_errors = Counter(
            "esam_encoder_errors_total", "Failed encoder calls by reason.", ["reason"], registry=r
        )
        self.encoder_circuit_state = Gauge(
            "esam_encoder_circuit_state",
            "Circuit breaker in front of the encoder: 0 closed, 1 half-open, 2 open "
            "(with several Triton endpoints: the best of theirs, 2 when all are open).",
            registry=r,
        )
        self.triton_endpoints = Gauge(
            "esam_triton_endpoints",
            "Triton endpoints this gateway balances over, by circuit state.",
            ["state"],
            registry=r,
        )
        self.pending_encodes = Gauge(
            "esam_pending_encodes",
            "Encodes waiting or running in this process (ESAM_MAX_PENDING_ENCODES bounds it).",
            registry=r,
        )
        self.encodes_refused = Counter(
            "esam_encodes_refused_total",
            "New images refused with 429 because ESAM_MAX_PENDING_ENCODES encodes were pending.",
            registry=r,
        )
        self.image_decodes = Gauge(
            "esam_image_decodes_in_progress",
            "Full-resolution image decodes running (ESAM_MAX_CONCURRENT_IMAGE_DECODES bounds it).",
            registry=r,
        )
        self.decoder_duration = Histogram(
            "esam_decoder_duration_seconds",
            "Mask decoder latency per request (all prompts, masks encoded).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decoder_prompts = Counter("esam_decoder_prompts_total", "Prompts decoded.", registry=r)
        self.decoder_errors = Counter(
            "esam_decoder_errors_total",
            "Triton decoder calls that failed, by reason (timeout, unreachable, request, "
            "circuit_open, overloaded).",
            ["reason"],
            registry=r,
        )
        self.decoder_sent_bytes = Counter(
            "esam_decoder_sent_bytes_total",
            "Bytes of input tensors sent to the Triton decoder (prompts; embeddings when not "
            "resident).",
            registry=r,
        )
        self.decoder_fallbacks = Counter(
            "esam_decoder_fallbacks_total",
            "Clicks decoded in the gateway because the Triton decoder could not take them.",
            registry=r,
        )
        self.decoder_embedding_sends = Counter(
            "esam_decoder_embedding_sends_total",
            "Triton decoder calls repeated with the embedding (the image was not resident).",
            registry=r,
        )
        self.everything_duration = Histogram(
            "esam_everything_duration_seconds",
            "Segment-everything jobs: grid decode, filtering, NMS, masks encoded.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.edges_duration = Histogram(
            "esam_edges_duration_seconds",
            "Edge-detection jobs: grid decode, NMS, Sobel on every mask kept, thinning.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.singleflight_waits = Counter(
            "esam_singleflight_waits_total",
            "Requests that waited for another request's encode (scope: process, redis_lock).",
            ["scope"],
            registry=r,
        )
        self.redis_errors = Counter(
            "esam_redis_errors_total",
            "Redis operations that failed, by operation (get, set, holds, grant, delete).",
            ["op"],
            registry=r,
        )
        self.cache_invalidations = Counter(
            "esam_cache_invalidations_total",
            "In-process entries dropped because a replica deleted them (source: message, "
            "resync = the invalidation channel reconnected and the tier was cleared).",
            ["source"],
            registry=r,
        )
        self.tenant_requests = Counter(
            "esam_tenant_requests_total",
            "Requests by tenant (configured tenants only) and priority (interactive, bulk).",
            ["tenant", "priority"],
            registry=r,
        )
        self.tenant_refused = Counter(
            "esam_tenant_refused_total",
            "Requests refused with 429 by tenant and limit (rate: ESAM_TENANT_RPS; "
            "pending_encodes: ESAM_TENANT_PENDING_ENCODES; bulk_share: ESAM_INTERACTIVE_SHARE).",
            ["tenant", "limit"],
            registry=r,
        )
        self.tenant_pending_encodes = Gauge(
            "esam_tenant_pending_encodes",
            "Encodes pending in this process by tenant.",
            ["tenant"],
            registry=r,
        )
        self.redis_up = Gauge(
            "esam_redis_up", "1 while the Redis tier answers, 0 while it is bypassed.", registry=r
        )
        self.model_info = Gauge(
            "esam_model_info",
            "1 for the model this process serves (its id keys the cache).",
            ["model", "encoder", "cache", "embedding_dtype"],
            registry=r,
        )
