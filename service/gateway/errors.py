"""The HTTP side of the error table in ``service/errors.py``: one renderer, the OpenAPI
responses of a route from the kinds it can raise, handlers registered once."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    CacheUnavailableError,
    DecoderUnavailableError,
    EmbeddingNotFoundError,
    EncoderUnavailableError,
    EsamError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidPromptError,
    InvalidRequestError,
    OverloadedError,
    TenantLimitError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    error_kinds,
)
from service.gateway.protocol_types import BY_ID, WITH_IMAGE

log = logging.getLogger("service.gateway")

#: error code -> HTTP status, from the table
STATUS: dict[str, int] = {kind.code: kind.status for kind in error_kinds()}

#: Statuses Starlette/FastAPI raise themselves → our codes. A body that cannot be
#: parsed (bad JSON bytes, too many multipart fields) is a validation error: 422.
_HTTP_CODES = {
    400: InvalidRequestError.code,
    404: "not_found",
    405: "method_not_allowed",
    413: ImageTooLargeError.code,
}


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable error code")
    message: str = Field(description="what was wrong, for humans")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


ErrorKinds = tuple[type[EsamError], ...]
#: the kinds most routes share
AUTH: ErrorKinds = (UnauthorizedError,)
BAD_REQUEST: ErrorKinds = (InvalidRequestError,)
BAD_INPUT: ErrorKinds = (
    ImageTooLargeError,
    InvalidImageError,
    InvalidPromptError,
    InvalidRequestError,
)
OVERLOAD: ErrorKinds = (OverloadedError, TenantLimitError)
NOT_FOUND: ErrorKinds = (EmbeddingNotFoundError,)
ENCODING: ErrorKinds = (UnsupportedMediaTypeError, EncoderUnavailableError)
DECODING: ErrorKinds = (EncoderUnavailableError, DecoderUnavailableError)
DELETING: ErrorKinds = (CacheUnavailableError,)


def error_responses(*groups: ErrorKinds | type[EsamError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error kinds a route can raise: one per status,
    describing each of its kinds (by code) as the table does."""
    kinds: list[type[EsamError]] = []
    for group in groups:
        for kind in group if isinstance(group, tuple) else (group,):
            if kind not in kinds:
                kinds.append(kind)
    by_status: dict[int, list[type[EsamError]]] = {}
    for kind in kinds:
        by_status.setdefault(kind.status, []).append(kind)
    return {
        status: {
            "model": ErrorResponse,
            "description": "; ".join(f"{k.description} (`{k.code}`)" for k in members),
        }
        for status, members in sorted(by_status.items())
    }


def error_response(
    code: str, message: str, status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error shape: ``{"error": {"code": ..., "message": ...}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def render(exc: EsamError) -> JSONResponse:
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(exc.code, exc.message, exc.status, headers)


def _validation_code(exc: RequestValidationError) -> str:
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        if "prompts" in loc:
            return InvalidPromptError.code
    return InvalidRequestError.code


#: parts of a validation error's location that name no field of the request
_NOT_A_FIELD = frozenset({"body", BY_ID, WITH_IMAGE})


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p not in _NOT_A_FIELD)
        parts.append(f"{loc or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def _documented_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for this request's path (for a 405's
    ``Allow``); none for an undocumented path."""
    segments = request.url.path.split("/")
    for template, operations in request.app.openapi()["paths"].items():
        parts = template.split("/")
        if len(parts) == len(segments) and all(
            part == segment or (part.startswith("{") and segment)
            for part, segment in zip(parts, segments, strict=True)
        ):
            return sorted(method.upper() for method in operations)
    return []


def register_error_handlers(app: FastAPI) -> None:
    async def on_esam_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EsamError)
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        log.log(level, "%s %s -> %s: %s", request.method, request.url.path, exc.code, exc.message)
        return render(exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        code = _validation_code(exc)
        message = _validation_message(exc)
        log.info("%s %s -> %s: %s", request.method, request.url.path, code, message)
        return error_response(code, message, 422)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        status = STATUS.get(code, exc.status_code)
        headers = exc.headers
        methods = _documented_methods(request) if exc.status_code == 405 else []
        if methods:  # Starlette names the methods of the first route on the path only
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
        return error_response(code, str(exc.detail), status, headers)

    app.add_exception_handler(EsamError, on_esam_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
