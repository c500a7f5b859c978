"""All configuration, read once from ``ESAM_*`` environment variables.

``Settings()`` refuses unsafe or inconsistent values at start-up; the error
names the setting (``python -m service`` prints it on one line).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.core.cache.redis_client import RedisTarget, redis_urls
from service.core.embedding import EmbeddingDtype
from service.core.encoders.triton_targets import parse_targets
from service.core.tenancy import TENANT_PATTERN, parse_keys, split_entries
from service.model import Precision, Variant

#: Pillow refuses images above 2 × 89.5 MP outright; stay below that.
PIXEL_HARD_LIMIT = 178_000_000
MiB = 1 << 20


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class TenantLimits(BaseModel):
    """One tenant's limits in ``ESAM_TENANT_LIMITS`` (a field left out: the default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rps: float | None = Field(default=None, ge=0, le=1_000_000)
    burst: int | None = Field(default=None, ge=0, le=1_000_000)
    pending_encodes: int | None = Field(default=None, ge=0, le=100_000)


def _device(device: str) -> str:
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError("must be 'cpu' or 'cuda[:N]'")
    return device


class ModelSettings(BaseModel):
    """The checkpoint: which one, and where the official one is downloaded."""

    variant: Variant | None = Field(
        default=None, description="ti or s; inferred from the checkpoint when unset."
    )
    checkpoint: str | None = Field(
        default=None,
        description="Checkpoint path; 'random' for a demo with random weights; "
        "unset: download the official one.",
    )
    weights_dir: Path | None = Field(
        default=None,
        description="Where the official checkpoint is downloaded when ESAM_CHECKPOINT is "
        "unset (and where `python -m service.fetch_weights` puts it); default: the user "
        "cache directory.",
    )


class EncoderSettings(BaseModel):
    """The image encoder: in this process or in Triton, and its budget of pending encodes."""

    encoder: Literal["local", "triton"] = "local"
    encoder_device: str = "cpu"
    encoder_precision: Precision = "fp32"
    encoder_max_batch: int = Field(default=8, ge=1, le=256)
    max_pending_encodes: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="Encodes waiting or running in this process (after single flight); "
        "beyond it a new image gets 429 at once, before it is decoded.",
    )
    max_concurrent_image_decodes: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Full-resolution image decodes at once (each holds its decoded image).",
    )
    encode_timeout_s: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("encoder_device")
    @classmethod
    def _encoder_device(cls, device: str) -> str:
        return _device(device)

    @model_validator(mode="after")
    def _precision_for_the_device(self) -> Self:
        if self.encoder_precision != "fp32" and self.encoder_device == "cpu":
            raise ValueError(
                "encoder_precision: reduced precision is for GPUs; use fp32 with encoder_device=cpu"
            )
        return self


class DecoderSettings(BaseModel):
    """The mask decoder (clicks, segment everything, edges): where it runs, its limits."""

    decoder: Literal["local", "triton"] = Field(
        default="local",
        description="Where clicks are decoded: `local` (this process, ESAM_DECODER_DEVICE) or "
        "`triton` (efficientsam_decoder beside the encoder, embeddings resident on its GPU; "
        "segment everything stays local).",
    )
    decoder_device: str = "cpu"
    max_concurrent_decodes: int = Field(default=2, ge=1, le=256)
    triton_decoder_model: str = "efficientsam_decoder"
    decode_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Deadline of one click's decode in Triton (a re-sent embedding included).",
    )
    decode_job_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Deadline of one /edges job in Triton (ESAM_DECODER=triton).",
    )
    decoder_fallback: bool = Field(
        default=True,
        description="With ESAM_DECODER=triton: a click Triton cannot take (down, restarting, "
        "past the deadline) is decoded in this process while a decoder thread is free, "
        "instead of 503.",
    )
    max_pending_decodes: int = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="Clicks waiting on the Triton decoder in this process; beyond it 429 at once.",
    )
    max_everything_jobs: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Segment-everything and edge jobs at once in this process (one limit for "
        "both); beyond it 429 at once.",
    )
    max_everything_prompts: int = Field(
        default=64 * 64 * 21,
        ge=1,
        le=64 * 64 * 21,
        description="Decoder prompts one segment-everything or edge job may run: "
        "points_per_side² per crop (1, +4, +16 crops); beyond it 422. Lower it where the "
        "decoder runs on CPU.",
    )
    everything_memory_mb: int = Field(
        default=256,
        ge=16,
        le=1 << 20,
        description="Memory for the full-size logits of one segment-everything job: "
        "candidates are upsampled in chunks that fit it.",
    )

    @field_validator("decoder_device")
    @classmethod
    def _decoder_device(cls, device: str) -> str:
        return _device(device)


class TritonSettings(BaseModel):
    """The Triton servers that the encoder (and the Triton decoder) run in."""

    triton_url: str = Field(
        default="grpc://127.0.0.1:8001",
        description="One or more comma-separated grpc://host:port (or http://); a host name "
        "is resolved to all its addresses (a headless Service) and re-resolved.",
    )
    triton_model: str = "efficientsam"
    triton_shared_memory: Literal["none", "system"] = Field(
        default="none",
        description="`system`: Triton writes each embedding into a POSIX shared-memory region "
        "of the gateway instead of its answer (Triton on the same host, sharing /dev/shm: a "
        "sidecar). Saved 2-3 ms of gateway CPU per new 1080p image (bench/triton.py); up to "
        "ESAM_MAX_PENDING_ENCODES regions of 2 MiB (FP16) per Triton.",
    )
    triton_resolve_s: float = Field(default=10.0, ge=0.5, le=3600)

    @field_validator("triton_url")
    @classmethod
    def _triton_targets(cls, urls: str) -> str:
        parse_targets(urls)  # the Triton client's own parser
        return urls


class CacheSettings(BaseModel):
    """The embedding cache: the in-process LRU, Redis (standalone, Cluster, Sentinel), and
    the precision embeddings are stored in."""

    cache: Literal["memory", "redis"] = "memory"
    redis_mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="standalone: one URL; cluster: any node, or several comma-separated; "
        "sentinel: the sentinels, comma-separated.",
    )
    redis_sentinel_master: str = Field(default="mymaster", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    redis_key_prefix: str = Field(default="esam", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    redis_timeout_s: float = Field(default=0.5, gt=0, le=30)
    redis_retry_s: float = Field(default=2.0, ge=0, le=300)
    lock_ttl_s: float = Field(
        default=10.0,
        ge=1,
        le=3600,
        description="TTL of the cross-replica encode lock; renewed every third of it while "
        "the encode runs, so it only bounds how long a crashed replica's lock lingers.",
    )
    lock_wait_s: float | None = Field(
        default=None,
        ge=0,
        le=7200,
        description="How long a replica waits for another's encode; default: the encode "
        "deadline plus the lock TTL.",
    )
    embedding_dtype: EmbeddingDtype = Field(
        default="int8",
        description="How embeddings are kept in every tier (L1, Redis, the Triton decoder's "
        "device): float32 (bit-exact), float16, or int8 with a scale per channel (half "
        "float16's bytes).",
    )
    cache_ttl_s: int = Field(default=24 * 3600, ge=1, le=30 * 24 * 3600)
    memory_cache_mb: int = Field(default=256, ge=0, le=1 << 20)

    @field_validator("redis_url")
    @classmethod
    def _redis_urls(cls, url: str) -> str:
        redis_urls(url)  # the cache's own parser (the mode is checked with RedisTarget.parse)
        return url

    @model_validator(mode="after")
    def _redis_target(self) -> Self:
        try:
            RedisTarget.parse(self.redis_mode, self.redis_url, self.redis_sentinel_master)
        except ValueError as exc:
            raise ValueError(f"ESAM_REDIS_URL: {exc}") from exc
        return self


class LimitSettings(BaseModel):
    """What one request may send."""

    max_image_bytes: int = Field(default=32 * MiB, ge=1024, le=1 << 30)
    max_image_pixels: int = Field(default=50_000_000, ge=1, le=PIXEL_HARD_LIMIT)
    max_prompts: int = Field(default=64, ge=1, le=4096)


class TenancySettings(BaseModel):
    """API keys and their tenants, per-tenant limits, the interactive share."""

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Comma-separated API keys, each `tenant:key` (a bare key belongs to the "
        "tenant `default`); empty: no key needed.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="A file of more `tenant:key` entries (one per line or comma-separated, "
        "`#` comments): a mounted Kubernetes Secret. Re-read when it changes, so keys rotate "
        "without a restart; while a new version is unreadable or invalid the last good one "
        "stays in force.",
    )
    tenant_rps: float = Field(
        default=0.0,
        ge=0,
        le=1_000_000,
        description="Requests per second each tenant may send to this replica (a token "
        "bucket); 0: no limit. Beyond it 429 `tenant_limit`.",
    )
    tenant_burst: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="How many requests a tenant may send at once above ESAM_TENANT_RPS; "
        "0: twice the rate (at least 1).",
    )
    tenant_pending_encodes: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="New images each tenant may have being encoded in this replica; 0: only "
        "ESAM_MAX_PENDING_ENCODES. Beyond it 429 `tenant_limit`.",
    )
    tenant_limits: dict[str, TenantLimits] = Field(
        default_factory=dict,
        description='Per-tenant overrides as JSON, e.g. `{"acme": {"rps": 50, '
        '"pending_encodes": 8}}` (keys: rps, burst, pending_encodes).',
    )
    interactive_share: float = Field(
        default=0.25,
        ge=0,
        le=0.9,
        description="The share of the encode budget (ESAM_MAX_PENDING_ENCODES) and of the "
        "decoder's slots kept for interactive requests: bulk ones (`X-Priority: bulk`) may "
        "hold the rest only (at least one).",
    )

    _split_keys = field_validator("api_keys", mode="before")(_split_csv)

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, keys: list[str]) -> list[str]:
        parse_keys(keys)  # the parser the gateway uses
        return keys

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        try:
            parse_keys(split_entries(text))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return path

    @field_validator("tenant_limits")
    @classmethod
    def _tenant_names(cls, limits: dict[str, TenantLimits]) -> dict[str, TenantLimits]:
        bad = [name for name in limits if not TENANT_PATTERN.match(name)]
        if bad:
            raise ValueError(f"not tenant names (lowercase letters, digits, '-'): {bad}")
        return limits

    @property
    def auth_enabled(self) -> bool:
        """Whether requests need an API key (keys listed, or a keys file named)."""
        return bool(self.api_keys) or self.api_keys_file is not None

    def limits_for(self, tenant: str) -> TenantLimits:
        """``tenant``'s limits: its ESAM_TENANT_LIMITS entry over the defaults (0: none)."""
        own = self.tenant_limits.get(tenant, TenantLimits())
        rps = self.tenant_rps if own.rps is None else own.rps
        burst = self.tenant_burst if own.burst is None else own.burst
        return TenantLimits(
            rps=rps,
            burst=burst or max(1, int(2 * rps)),
            pending_encodes=(
                self.tenant_pending_encodes if own.pending_encodes is None else own.pending_encodes
            ),
        )


class HttpSettings(BaseModel):
    """The HTTP server: address, CORS, the demo page, graceful shutdown."""

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ui: bool | None = Field(
        default=None,
        description="The demo page at /ui; unset: on with the embedded encoder, off with Triton.",
    )
    ui_assets_dir: Path = Field(
        default=Path("build/ui-assets"),
        description=(
            "Where `make ui-assets` put onnxruntime-web: when its files are there (and the "
            "onnx extra is installed), the demo page also decodes clicks in the browser; the "
            "exported decoder is kept in its models/ folder."
        ),
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    shutdown_grace_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="After SIGTERM, how long in-flight requests may run before they are "
        "cancelled (keep it under Kubernetes' terminationGracePeriodSeconds minus preStop).",
    )

    _split_origins = field_validator("cors_origins", mode="before")(_split_csv)


class LabelStudioSettings(BaseModel):
    """Label Studio's ML backend (/labelstudio) and fetching images by URL."""

    label_studio_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/\s]+(/\S*)?$",
        description="Label Studio's address: its /data/... image paths are fetched from it "
        "(with the API key below), and its host is allowed even on a private address.",
    )
    label_studio_api_key: str | None = Field(
        default=None,
        repr=False,
        description="A Personal Access Token (exchanged at /api/token/refresh/) or a legacy "
        "token, sent only to Label Studio's own host.",
    )
    label_studio_preannotate: Literal["none", "everything"] = Field(
        default="none",
        description="A prediction without a click (opening a task, Retrieve predictions): "
        "the image is encoded and cached either way; none answers an empty result, "
        "everything the segment-everything masks as brush regions.",
    )
    label_studio_everything: dict[str, float | int | str] = Field(
        default_factory=dict,
        description="JSON: segment-everything parameters for that pre-annotation "
        '(as /segment/everything\'s, e.g. {"points_per_side": 16, "pred_iou_thresh": 0.8}).',
    )
    label_studio_batch_budget_s: float = Field(
        default=80,
        gt=0,
        le=3600,
        description="A Retrieve-predictions request is answered within this (Label Studio "
        "waits ML_TIMEOUT_PREDICT, 100 s); tasks not ready by then are answered as "
        "model_version +pending and keep encoding, ready for the next request.",
    )
    fetch_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts whose image URLs may be fetched besides Label Studio's: names, "
        "*.example.com, IP addresses or CIDRs (only a named address may be non-public).",
    )
    fetch_timeout_s: float = Field(default=10, gt=0, le=300)

    _split_hosts = field_validator("fetch_allowed_hosts", mode="before")(_split_csv)


class ObservabilitySettings(BaseModel):
    """Logs, and tracing by the standard OpenTelemetry variables (the SDK reads the rest)."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="json: one object per line (time, level, logger, message, request id, "
        "trace and span ids), uvicorn's access log included.",
    )
    otel_traces_exporter: str = Field(
        default="",
        validation_alias="OTEL_TRACES_EXPORTER",
        pattern=r"^\s*((otlp|console|none)\s*(,\s*(otlp|console|none)\s*)*)?$",
        description="otlp and/or console (comma-separated), or none; unset: otlp when an "
        "OTLP endpoint is set, else no tracing.",
    )
    otel_exporter_otlp_endpoint: str = Field(
        default="",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
    )
    otel_sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED")

    @property
    def trace_exporters(self) -> list[str]:
        """The span exporters to install; empty: tracing off (the default)."""
        if self.otel_sdk_disabled:
            return []
        names = [n.strip() for n in self.otel_traces_exporter.split(",") if n.strip()]
        if not names:
            return ["otlp"] if self.otel_exporter_otlp_endpoint else []
        return [n for n in dict.fromkeys(names) if n != "none"]


class Settings(
    ModelSettings,
    EncoderSettings,
    DecoderSettings,
    TritonSettings,
    CacheSettings,
    LimitSettings,
    TenancySettings,
    HttpSettings,
    LabelStudioSettings,
    ObservabilitySettings,
    BaseSettings,
):
    """Every setting, one group per concern (the groups above; a component that needs one
    concern only may take its group as its type). The names stay flat ``ESAM_*``."""

    model_config = SettingsConfigDict(
        env_prefix="ESAM_", extra="ignore", frozen=True, populate_by_name=True
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if "*" in self.cors_origins and self.auth_enabled:
            raise ValueError("cors_origins: '*' together with api_keys would expose keyed routes")
        return self

    @model_validator(mode="after")
    def _no_unknown_variables(self) -> Settings:
        unknown = unknown_variables(os.environ)
        if unknown:
            raise ValueError("; ".join(unknown))
        return self

    @property
    def ui_enabled(self) -> bool:
        return self.ui if self.ui is not None else self.encoder == "local"

    @property
    def lock_wait(self) -> float:
        """Seconds to wait for another replica's encode (it may take the whole deadline)."""
        if self.lock_wait_s is not None:
            return self.lock_wait_s
        return self.encode_timeout_s + self.lock_ttl_s


#: ``ESAM_*`` variables that are not settings of the gateway.
NOT_SETTINGS = frozenset(
    {
        "ESAM_FIXTURES_DIR",  # the tests' and benchmarks' conformance fixture
    }
)
#: Settings that were renamed or folded into another: the error says where they went.
RENAMED = {"ESAM_ENCODER_QUEUE_SIZE": "ESAM_MAX_PENDING_ENCODES"}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One message per ``ESAM_*`` variable that no setting reads, with the closest name."""
    known = {f"ESAM_{name.upper()}" for name in Settings.model_fields}
    messages = []
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith("ESAM_") or name in known or name in NOT_SETTINGS:
            continue
        if name in RENAMED:
            messages.append(f"{variable} is no longer a setting: use {RENAMED[name]}")
            continue
        candidates = {k.removeprefix("ESAM_"): k for k in [*known, *RENAMED]}
        close = difflib.get_close_matches(name.removeprefix("ESAM_"), candidates, n=1, cutoff=0.6)
        hint = ""
        if close:
            suggestion = candidates[close[0]]
            hint = f"; did you mean {RENAMED.get(suggestion, suggestion)}?"
        messages.append(f"unknown setting {variable}{hint}")
    return messages
