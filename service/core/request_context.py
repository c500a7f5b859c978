"""Request id (accepted from ``X-Request-Id`` or generated), for logging and for the
calls a request makes (Triton names it in its own log and traces)."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def current_request_id(default: str = "-") -> str:
    """This request's id; ``default`` outside a request (a log line of the server's own)."""
    return _request_id.get() or default


def new_request_id(incoming: str | None) -> str:
    return incoming if incoming and _SAFE_ID.match(incoming) else uuid.uuid4().hex


def set_request_id(request_id: str) -> contextvars.Token[str | None]:
    return _request_id.set(request_id)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``%(request_id)s`` to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True
