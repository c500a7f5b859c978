"""One table from error code to HTTP status, one renderer, handlers registered once."""

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
    ImageFetchError,
    ImageTooLargeError,
    ImageUrlNotAllowedError,
    InvalidImageError,
    InvalidPromptError,
    InvalidRequestError,
    OverloadedError,
    TenantLimitError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from service.gateway.protocol_types import BY_ID, WITH_IMAGE

log = logging.getLogger("service.gateway")

STATUS: dict[str, int] = {
    InvalidRequestError.code: 422,
    InvalidImageError.code: 422,
    InvalidPromptError.code: 422,
    ImageTooLargeError.code: 413,
    UnsupportedMediaTypeError.code: 415,
    EmbeddingNotFoundError.code: 404,
    UnauthorizedError.code: 401,
    ImageUrlNotAllowedError.code: 422,
    ImageFetchError.code: 502,
    OverloadedError.code: 429,
    TenantLimitError.code: 429,
    EncoderUnavailableError.code: 503,
    DecoderUnavailableError.code: 503,
    CacheUnavailableError.code: 503,
}

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


_DESCRIPTIONS: dict[int | str, str] = {
    401: "missing or invalid API key (`unauthorized`)",
    404: "no cached embedding for this image that the caller's tenant uploaded "
    "(`embedding_not_found`; another tenant's image is answered as an unknown one): send "
    "the image again",
    413: "body or image too large (`image_too_large`)",
    415: "unsupported Content-Type or image format (`unsupported_media_type`)",
    422: "invalid image, prompt or request (`invalid_image`, `invalid_prompt`, `invalid_request`)",
    "422-fetch": "invalid image, prompt or request (`invalid_image`, `invalid_prompt`, "
    "`invalid_request`), or an image reference the service may not fetch "
    "(`image_url_not_allowed`)",
    429: "the encoder queue is full, bulk work holds its share of it, or (segment "
    "everything) as many jobs as allowed are running (`overloaded`); or the tenant's own "
    "limit is reached (`tenant_limit`: requests per second, pending encodes); retry after "
    "`Retry-After` seconds",
    502: "the image could not be fetched from where the task says (`image_fetch_failed`)",
    503: "the encoder is unavailable (`encoder_unavailable`); retry after `Retry-After` seconds",
    "503-decode": "the encoder or the mask decoder is unavailable (`encoder_unavailable`, "
    "`decoder_unavailable`); retry after `Retry-After` seconds",
    "503-delete": "the shared cache could not confirm the delete on every replica "
    "(`cache_unavailable`); retry after `Retry-After` seconds",
}


def error_responses(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the errors a route can answer (a variant of a
    status's description as ``"<status>-<variant>"``)."""
    return {
        int(str(s).split("-")[0]): {"model": ErrorResponse, "description": _DESCRIPTIONS[s]}
        for s in statuses
    }


def error_response(
    code: str, message: str, status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error shape: ``{"error": {"code": ..., "message": ...}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def render(exc: EsamError) -> JSONResponse:
    status = STATUS.get(exc.code, 500)
    headers: dict[str, str] = {}
    if isinstance(
        exc,
        EncoderUnavailableError | DecoderUnavailableError | OverloadedError | CacheUnavailableError,
    ):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(exc.code, exc.message, status, headers)


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
        level = logging.WARNING if STATUS.get(exc.code, 500) >= 500 else logging.INFO
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
