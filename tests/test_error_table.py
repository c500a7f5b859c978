"""The one error table: every kind has its own code, a status and a description; the
gateway renders each from its declaration, with ``Retry-After`` exactly where the kind
says; a route's documented responses come from the kinds it names."""

from __future__ import annotations

import json

from service.errors import (
    CacheUnavailableError,
    CheckpointError,
    EmbeddingNotFoundError,
    EncoderUnavailableError,
    EsamError,
    InvalidImageError,
    OverloadedError,
    TenantLimitError,
    WeightsDownloadError,
    error_kinds,
)
from service.gateway.errors import STATUS, error_responses, render

NEVER_ANSWERED = {EsamError, CheckpointError, WeightsDownloadError}  # start-up only


def test_every_kind_has_its_own_code_a_status_and_a_description() -> None:
    kinds = error_kinds()
    codes = [kind.code for kind in kinds]
    assert len(codes) == len(set(codes)), codes
    assert {TenantLimitError, OverloadedError, EmbeddingNotFoundError} <= set(kinds)
    for kind in set(kinds) - NEVER_ANSWERED:
        assert 400 <= kind.status < 600, kind
        assert kind.description, kind
        assert kind.description != EsamError.description, kind
        assert STATUS[kind.code] == kind.status


def test_a_kind_is_rendered_from_its_declaration() -> None:
    overloaded = render(OverloadedError("busy"))
    assert overloaded.status_code == 429
    assert overloaded.headers["Retry-After"] == "1"  # the kind's default
    assert render(TenantLimitError("acme", retry_after_s=7)).headers["Retry-After"] == "7"
    assert render(CacheUnavailableError("no")).headers["Retry-After"] == "2"
    assert render(EncoderUnavailableError("down")).status_code == 503
    bad = render(InvalidImageError("truncated"))
    assert bad.status_code == 422
    assert "Retry-After" not in bad.headers
    assert json.loads(bytes(bad.body)) == {
        "error": {"code": "invalid_image", "message": "truncated"}
    }


def test_a_routes_responses_describe_each_kind_by_its_status() -> None:
    responses = error_responses((OverloadedError, TenantLimitError), InvalidImageError)
    assert sorted(responses) == [422, 429]
    assert "`overloaded`" in responses[429]["description"]
    assert "`tenant_limit`" in responses[429]["description"]
    assert responses[422]["description"] == f"{InvalidImageError.description} (`invalid_image`)"
