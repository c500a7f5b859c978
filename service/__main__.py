"""``python -m service``: serve the gateway with the ``ESAM_*`` settings (uvicorn)."""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from pydantic import ValidationError

from service.errors import CheckpointError
from service.settings import Settings


def logging_config(level: str) -> dict[str, Any]:
    fmt = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "service.gateway.request_context.RequestIdFilter"}},
        "formatters": {"default": {"format": fmt}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
        },
    }


def describe(error: ValidationError) -> str:
    """One line naming each bad setting by its environment variable."""
    parts = []
    for item in error.errors():
        name = "ESAM_" + "_".join(str(p) for p in item["loc"]).upper() if item["loc"] else "ESAM_*"
        parts.append(f"{name}: {item['msg']} (got {item.get('input')!r})")
    return "invalid settings: " + "; ".join(parts)


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(describe(exc), file=sys.stderr)
        return 2

    from service.core.loading import resolve_checkpoint
    from service.gateway import build_app

    try:
        checkpoint = resolve_checkpoint(settings)
    except CheckpointError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    settings = settings.model_copy(update={"checkpoint": checkpoint})
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=logging_config(settings.log_level),
        timeout_graceful_shutdown=30,
        proxy_headers=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
