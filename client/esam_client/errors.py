"""What a request to the gateway can fail with: the gateway's error, or no answer."""

from __future__ import annotations


class EsamError(Exception):
    """The gateway answered with an error: ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class EmbeddingNotFoundError(EsamError):
    """404 ``embedding_not_found``: the image must be sent again."""


class UnreachableError(EsamError):
    """No answer from the gateway (refused, reset, timed out), after the client's retries:
    ``status`` 0, ``code`` ``"unreachable"``; the transport error is its ``__cause__``."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)
