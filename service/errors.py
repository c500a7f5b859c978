"""The project's one error hierarchy.

Library exceptions are converted into these at the boundary
(``raise InvalidImageError(...) from exc``). Each carries a stable ``code``;
the gateway maps codes to HTTP statuses in a single table.
"""

from __future__ import annotations

from typing import ClassVar


class EsamError(Exception):
    """Base class of every error the service raises on purpose."""

    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- client errors -----------------------------------------------------------
class InvalidImageError(EsamError):
    code = "invalid_image"


class ImageTooLargeError(EsamError):
    code = "image_too_large"


class UnsupportedMediaTypeError(EsamError):
    code = "unsupported_media_type"


class InvalidPromptError(EsamError):
    code = "invalid_prompt"


class InvalidRequestError(EsamError):
    code = "invalid_request"


class EmbeddingNotFoundError(EsamError):
    code = "embedding_not_found"


class UnauthorizedError(EsamError):
    code = "unauthorized"


class ImageUrlNotAllowedError(EsamError):
    """An image URL the service must not fetch: scheme, host off the allow-list, or an
    address that is loopback, private, link-local or otherwise not public (SSRF)."""

    code = "image_url_not_allowed"


# --- upstream failures -----------------------------------------------------------
class ImageFetchError(EsamError):
    """The image's host answered with an error, too slowly, or not at all."""

    code = "image_fetch_failed"


# --- server-side conditions ----------------------------------------------------
class OverloadedError(EsamError):
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TenantLimitError(OverloadedError):
    """A tenant's own limit (requests per second, pending encodes) is reached."""

    code = "tenant_limit"


class EncoderUnavailableError(EsamError):
    code = "encoder_unavailable"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DecoderUnavailableError(EsamError):
    """The mask decoder (Triton's ``efficientsam_decoder``) did not answer in time."""

    code = "decoder_unavailable"

    def __init__(self, message: str, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CacheUnavailableError(EsamError):
    """The shared cache could not confirm an operation that must reach every replica."""

    code = "cache_unavailable"

    def __init__(self, message: str, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# --- start-up / tooling errors (never reach a client) -----------------------------
class CheckpointError(EsamError):
    code = "invalid_checkpoint"


class WeightsDownloadError(EsamError):
    code = "weights_download_failed"
