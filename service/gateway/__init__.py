"""The HTTP front door: FastAPI routes, errors, auth, metrics. Logic lives in ``service.core``."""

from service.gateway.app import build_app

__all__ = ["build_app"]
