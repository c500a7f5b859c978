"""``python -m service``: serve the gateway with the ``ESAM_*`` settings (uvicorn)."""

from __future__ import annotations

import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from pydantic import ValidationError

from service.errors import CheckpointError
from service.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI


def logging_config(level: str, log_format: str = "text") -> dict[str, Any]:
    fmt = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
    formatter: dict[str, Any] = {"format": fmt}
    if log_format == "json":
        formatter = {"()": "service.gateway.json_logs.JsonFormatter"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "service.core.request_context.RequestIdFilter"}},
        "formatters": {"default": formatter},
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
        if not item["loc"]:  # a check across settings: its message names them
            parts.append(item["msg"].removeprefix("Value error, "))
            continue
        name = "_".join(str(p) for p in item["loc"]).upper()
        name = name if name.startswith("OTEL_") else "ESAM_" + name
        parts.append(f"{name}: {item['msg']} (got {item.get('input')!r})")
    return "invalid settings: " + "; ".join(parts)


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(describe(exc), file=sys.stderr)
        return 2

    from service.core.allocator import return_large_buffers_to_os
    from service.core.loading import resolve_checkpoint
    from service.core.tracing import configure_tracing
    from service.gateway import build_app

    return_large_buffers_to_os()  # decoded images leave no heap behind
    try:
        checkpoint = resolve_checkpoint(settings)
    except CheckpointError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    settings = settings.model_copy(update={"checkpoint": checkpoint})
    provider = configure_tracing(settings.trace_exporters)
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=logging_config(settings.log_level, settings.log_format),
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        proxy_headers=True,
    )
    try:
        DrainingServer(config, app).run()
    finally:
        if provider is not None:
            provider.shutdown()  # the last spans leave before the process does
    return 0


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, ``/readyz`` answers 503 while in-flight requests finish."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        serving = getattr(self._app.state, "serving", None)
        if serving is not None:
            serving.draining = True
        super().handle_exit(sig, frame)


if __name__ == "__main__":
    raise SystemExit(main())
