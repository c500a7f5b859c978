"""The API key is checked from the headers, before any of the body is read (a real server)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from devtools.gateway_process import GatewayProcess
from tests.conftest import Fixture

KEY = "a-long-enough-api-key-0123"


@pytest.fixture(scope="module")
def keyed_gateway(fixture: Fixture) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        {"ESAM_CHECKPOINT": str(fixture.checkpoint), "ESAM_API_KEYS": KEY}
    ) as gateway:
        yield gateway


def first_response(port: int, head: bytes, body_part: bytes) -> bytes:
    """Send the headers and a little of the body, then read what comes back (5 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + body_part)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)  # a timeout here means: the server waits for the body
            if not chunk:
                break
            received += chunk
        return received


@pytest.mark.parametrize(
    "authorization", [b"", b"Authorization: Bearer wrong-key-0123456789\r\n"], ids=["none", "bad"]
)
@pytest.mark.parametrize("path", ["/embed", "/segment", "/embeddings/" + "0" * 64])
def test_401_before_the_body(
    keyed_gateway: GatewayProcess, path: str, authorization: bytes
) -> None:
    method = b"DELETE" if path.startswith("/embeddings") else b"POST"
    head = (
        method + b" " + path.encode() + b" HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\nContent-Length: 41943040\r\n" + authorization + b"\r\n"
    )
    response = first_response(keyed_gateway.port, head, b"{" + b" " * 1023)
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 401"), response[:300]
    assert b"www-authenticate: Bearer" in response.lower().replace(b"bearer", b"Bearer")


def test_open_paths_and_a_good_key(keyed_gateway: GatewayProcess) -> None:
    for path in (b"/healthz", b"/readyz", b"/metrics"):
        response = first_response(
            keyed_gateway.port, b"GET " + path + b" HTTP/1.1\r\nHost: gateway\r\n\r\n", b""
        )
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
    keyed = first_response(
        keyed_gateway.port,
        b"GET /openapi.json HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\n\r\n",
        b"",
    )
    assert keyed.startswith(b"HTTP/1.1 200"), keyed[:200]
