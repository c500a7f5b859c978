"""The project's one error hierarchy, and its one table: each error kind declares its
stable ``code``, its HTTP ``status``, whether it is answered with ``Retry-After`` (and
after how long by default), and the description the API documents for it.

Library exceptions are converted into these at the boundary
(``raise InvalidImageError(...) from exc``). The gateway renders every one of them from
these declarations (``gateway/errors.py``), and the OpenAPI responses of each route are
built from the kinds it can raise.
"""

from __future__ import annotations

from typing import ClassVar


class EsamError(Exception):
    """Base class of every error the service raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    description: ClassVar[str] = "a bug: the log line has the request id"
    #: answered with ``Retry-After`` (this many seconds unless the raiser says) when set
    retry_after_default_s: ClassVar[int | None] = None

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = (
            retry_after_s if retry_after_s is not None else self.retry_after_default_s
        )


# --- client errors -----------------------------------------------------------
class InvalidImageError(EsamError):
    code = "invalid_image"
    status = 422
    description = "the image is not decodable, truncated, bad base64 or empty"


class ImageTooLargeError(EsamError):
    code = "image_too_large"
    status = 413
    description = "the body or the image is too large"


class UnsupportedMediaTypeError(EsamError):
    code = "unsupported_media_type"
    status = 415
    description = "an unsupported Content-Type or image format"


class InvalidPromptError(EsamError):
    code = "invalid_prompt"
    status = 422
    description = "a prompt is invalid (outside the image, not finite, too many points)"


class InvalidRequestError(EsamError):
    code = "invalid_request"
    status = 422
    description = "the request is malformed (JSON, fields, headers)"


class EmbeddingNotFoundError(EsamError):
    code = "embedding_not_found"
    status = 404
    description = (
        "no cached embedding for this image that the caller's tenant uploaded (another "
        "tenant's image is answered as an unknown one): send the image again"
    )


class UnauthorizedError(EsamError):
    code = "unauthorized"
    status = 401
    description = "missing or invalid API key"


class ImageUrlNotAllowedError(EsamError):
    """An image URL the service must not fetch: scheme, host off the allow-list, or an
    address that is loopback, private, link-local or otherwise not public (SSRF)."""

    code = "image_url_not_allowed"
    status = 422
    description = "an image reference the service may not fetch"


# --- upstream failures -----------------------------------------------------------
class ImageFetchError(EsamError):
    """The image's host answered with an error, too slowly, or not at all."""

    code = "image_fetch_failed"
    status = 502
    description = "the image could not be fetched from where the task says"


# --- server-side conditions ----------------------------------------------------
class OverloadedError(EsamError):
    code = "overloaded"
    status = 429
    description = (
        "the encoder queue is full, bulk work holds its share of it, or (segment "
        "everything, edges) as many jobs as allowed are running; retry after `Retry-After` "
        "seconds"
    )
    retry_after_default_s = 1


class TenantLimitError(OverloadedError):
    """A tenant's own limit (requests per second, pending encodes) is reached."""

    code = "tenant_limit"
    description = (
        "the tenant's own limit (requests per second, pending encodes) is reached; retry "
        "after `Retry-After` seconds"
    )


class EncoderUnavailableError(EsamError):
    code = "encoder_unavailable"
    status = 503
    description = "the encoder is unavailable; retry after `Retry-After` seconds"
    retry_after_default_s = 5


class DecoderUnavailableError(EsamError):
    """The mask decoder (Triton's ``efficientsam_decoder``) did not answer in time."""

    code = "decoder_unavailable"
    status = 503
    description = "the mask decoder is unavailable; retry after `Retry-After` seconds"
    retry_after_default_s = 2


class CacheUnavailableError(EsamError):
    """The shared cache could not confirm an operation that must reach every replica."""

    code = "cache_unavailable"
    status = 503
    description = (
        "the shared cache could not confirm the delete on every replica; retry after "
        "`Retry-After` seconds"
    )
    retry_after_default_s = 2


# --- start-up / tooling errors (never reach a client) -----------------------------
class CheckpointError(EsamError):
    code = "invalid_checkpoint"


class WeightsDownloadError(EsamError):
    code = "weights_download_failed"


def error_kinds() -> list[type[EsamError]]:
    """Every error kind (the table), base class first: each class that declares its own
    code (a subclass without one, e.g. to carry details, is of its parent's kind)."""
    classes: list[type[EsamError]] = [EsamError]
    for cls in classes:
        classes += [k for k in cls.__subclasses__() if k not in classes]
    return [cls for cls in classes if "code" in vars(cls)]
