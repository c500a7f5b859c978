"""Pure ASGI middleware: request id, latency metrics, the request body limit, and the 500 path."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.metrics import Metrics
from service.core.request_context import new_request_id, reset_request_id, set_request_id
from service.errors import ImageTooLargeError
from service.gateway.errors import error_response

log = logging.getLogger("service.gateway")

#: Methods that become their own metric label; any other token a client sends is "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


class RequestContextMiddleware:
    """Every response carries ``X-Request-Id``; every request is timed by route and status.

    Bodies longer than ``max_body_bytes`` are refused with 413: at once when
    ``Content-Length`` says so, else as soon as the streamed body passes the
    limit (the rest is never read).
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = new_request_id(headers.get(b"x-request-id", b"").decode("latin-1"))
        token = set_request_id(request_id)
        status = 500
        start = time.perf_counter()
        self.metrics.in_flight.inc()

        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # an HTTPException passes through FastAPI's body parsing unchanged
                    raise HTTPException(
                        413, f"the request body is larger than {self.max_body_bytes} bytes"
                    )
            return message

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                response = error_response(
                    ImageTooLargeError.code,
                    f"the request body ({int(declared)} bytes) is larger than "
                    f"{self.max_body_bytes} bytes",
                    413,
                    {"Connection": "close"},
                )
                await response(scope, receive, send_with_id)
                return
            await self.app(scope, limited_receive, send_with_id)
        except asyncio.CancelledError:
            # the server gave up on it (shutdown past its grace period): say which one
            log.warning(
                "%s %s cancelled after %.1fs (%s)",
                scope["method"],
                scope["path"],
                time.perf_counter() - start,
                f"status {status} sent" if answered else "no answer sent",
            )
            raise
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")  # the route's template, never the URL
            self.metrics.request_duration.labels(
                method_label(scope["method"]), path, str(status)
            ).observe(time.perf_counter() - start)
            self.metrics.in_flight.dec()
            reset_request_id(token)


class UnhandledErrorMiddleware:
    """The innermost middleware: an unexpected exception becomes the one error shape (500).

    Because it answers *inside* the other middleware, the 500 carries ``X-Request-Id`` and
    the CORS headers like any other response, and its log line has the request id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise  # too late for an error response: the server closes the connection
            response = error_response("internal_error", "internal error; see the server log", 500)
            await response(scope, receive, send)
