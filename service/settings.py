"""All configuration, read once from ``ESAM_*`` environment variables.

``Settings()`` refuses unsafe or inconsistent values at start-up; the error
names the setting (``python -m service`` prints it on one line).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.model import Precision, Variant

#: Pillow refuses images above 2 × 89.5 MP outright; stay below that.
PIXEL_HARD_LIMIT = 178_000_000
MiB = 1 << 20


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ESAM_", extra="ignore", frozen=True)

    # --- model ---------------------------------------------------------------
    variant: Variant | None = Field(
        default=None, description="ti or s; inferred from the checkpoint when unset."
    )
    checkpoint: str | None = Field(
        default=None,
        description="Checkpoint path; 'random' for a demo with random weights; "
        "unset: download the official one.",
    )
    encoder: Literal["local", "triton"] = "local"
    encoder_device: str = "cpu"
    encoder_precision: Precision = "fp32"
    encoder_max_batch: int = Field(default=8, ge=1, le=256)
    encoder_queue_size: int = Field(default=64, ge=1, le=100_000)
    encode_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    decoder_device: str = "cpu"
    max_concurrent_decodes: int = Field(default=2, ge=1, le=256)
    triton_url: str = "grpc://127.0.0.1:8001"
    triton_model: str = "efficientsam_encoder"

    # --- cache ---------------------------------------------------------------
    cache: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = Field(default="esam", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    redis_timeout_s: float = Field(default=0.5, gt=0, le=30)
    redis_retry_s: float = Field(default=2.0, ge=0, le=300)
    lock_ttl_s: float = Field(default=30.0, gt=0, le=3600)
    lock_wait_s: float = Field(default=30.0, ge=0, le=3600)
    embedding_dtype: Literal["float16", "float32"] = "float16"
    cache_ttl_s: int = Field(default=24 * 3600, ge=1, le=30 * 24 * 3600)
    memory_cache_mb: int = Field(default=256, ge=0, le=1 << 20)

    # --- limits ----------------------------------------------------------------
    max_image_bytes: int = Field(default=32 * MiB, ge=1024, le=1 << 30)
    max_image_pixels: int = Field(default=50_000_000, ge=1, le=PIXEL_HARD_LIMIT)
    max_prompts: int = Field(default=64, ge=1, le=4096)

    # --- HTTP ------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    _split_lists = field_validator("api_keys", "cors_origins", mode="before")(_split_csv)

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, keys: list[str]) -> list[str]:
        if any(len(key) < 16 for key in keys):
            raise ValueError("every API key must be at least 16 characters long")
        return keys

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url

    @field_validator("encoder_device", "decoder_device")
    @classmethod
    def _device(cls, device: str) -> str:
        if device != "cpu" and not device.startswith("cuda"):
            raise ValueError("must be 'cpu' or 'cuda[:N]'")
        return device

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.encoder_precision != "fp32" and self.encoder_device == "cpu":
            raise ValueError(
                "encoder_precision: reduced precision is for GPUs; use fp32 with encoder_device=cpu"
            )
        if "*" in self.cors_origins and self.api_keys:
            raise ValueError("cors_origins: '*' together with api_keys would expose keyed routes")
        return self

    @property
    def random_weights(self) -> bool:
        return self.checkpoint == "random"
