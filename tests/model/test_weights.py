"""The verified downloader, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.errors import WeightsDownloadError
from service.model.weights import OFFICIAL_WEIGHTS, download_weights, git_blob_sha1

PAYLOAD = os.urandom(3 * (1 << 20) + 12345)


@dataclass
class Behaviour:
    """What the test server does; tests change it between calls."""

    body: bytes = PAYLOAD
    ranges: bool = True
    cut_after: int | None = None  # close the connection after this many body bytes
    status: int | None = None  # answer every request with this status and no body
    requests: list[dict[str, str]] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        b = self.behaviour
        b.requests.append(dict(self.headers))
        if b.status is not None:
            self.send_response(b.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        header = self.headers.get("Range")
        if b.ranges and header and header.startswith("bytes="):
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(b.body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(b.body) - 1}/{len(b.body)}")
        else:
            self.send_response(200)
        chunk = b.body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if b.cut_after is not None:
            self.wfile.write(chunk[: b.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    handler = type("Handler", (_Handler,), {"behaviour": behaviour})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/efficient_sam_vitt.pt", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()


def _payload_files(directory: Path) -> list[str]:
    """The checkpoint and its partial download, if any (the lock file is not data)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def payload_sha1(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The git blob id, computed by git itself (an independent oracle)."""
    path = tmp_path_factory.mktemp("oracle") / "payload"
    path.write_bytes(PAYLOAD)
    return subprocess.run(
        ["git", "hash-object", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_git_blob_sha1_matches_git(tmp_path: Path, payload_sha1: str) -> None:
    path = tmp_path / "payload"
    path.write_bytes(PAYLOAD)
    assert git_blob_sha1(path) == payload_sha1


def test_good_download_is_verified_and_reused(
    server: tuple[str, Behaviour], payload_sha1: str, tmp_path: Path
) -> None:
    url, behaviour = server
    path = download_weights("ti", tmp_path, url=url, expected_sha1=payload_sha1, progress=False)
    assert path == tmp_path / OFFICIAL_WEIGHTS["ti"].filename
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / (path.name + ".part")).exists()
    again = download_weights("ti", tmp_path, url=url, expected_sha1=payload_sha1, progress=False)
    assert again == path
    assert len(behaviour.requests) == 1  # the verified file was reused


def test_corrupted_file_is_discarded(
    server: tuple[str, Behaviour], payload_sha1: str, tmp_path: Path
) -> None:
    url, behaviour = server
    corrupted = bytearray(PAYLOAD)
    corrupted[1000] ^= 0xFF
    behaviour.body = bytes(corrupted)
    with pytest.raises(WeightsDownloadError, match="checksum mismatch"):
        download_weights("ti", tmp_path, url=url, expected_sha1=payload_sha1, progress=False)
    assert _payload_files(tmp_path) == []


def test_truncated_file_is_discarded(
    server: tuple[str, Behaviour], payload_sha1: str, tmp_path: Path
) -> None:
    url, behaviour = server
    behaviour.body = PAYLOAD[: len(PAYLOAD) // 3]
    with pytest.raises(WeightsDownloadError, match="checksum mismatch"):
        download_weights("ti", tmp_path, url=url, expected_sha1=payload_sha1, progress=False)
    assert _payload_files(tmp_path) == []


def test_interrupted_download_resumes_with_a_range_request(
    server: tuple[str, Behaviour], payload_sha1: str, tmp_path: Path
) -> None:
    url, behaviour = server
    behaviour.cut_after = 1 << 20
    with pytest.raises(WeightsDownloadError, match="run again to resume"):
        download_weights("ti", tmp_path, url=url, expected_sha1=payload_sha1, progress=False)
    target = tmp_path / OFFICIAL_WEIGHTS["ti"].filename
    assert not target.exists()  # nothing unverified where the verified file belongs
    part = tmp_path / (target.name + ".part")
    assert part.stat().st_size == 1 << 20

    behaviour.cut_after = None
    path = download_weights("ti", tmp_path, url=url, expected_sha1=payload_sha1, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert behaviour.requests[-1]["Range"] == f"bytes={1 << 20}-"


def test_server_without_ranges_restarts_cleanly(
    server: tuple[str, Behaviour], payload_sha1: str, tmp_path: Path
) -> None:
    url, behaviour = server
    behaviour.ranges = False
    part = tmp_path / (OFFICIAL_WEIGHTS["ti"].filename + ".part")
    part.write_bytes(b"garbage from an earlier attempt")
    path = download_weights("ti", tmp_path, url=url, expected_sha1=payload_sha1, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_tampered_cached_file_is_replaced(
    server: tuple[str, Behaviour], payload_sha1: str, tmp_path: Path
) -> None:
    url, behaviour = server
    target = tmp_path / OFFICIAL_WEIGHTS["ti"].filename
    target.write_bytes(b"tampered")
    path = download_weights("ti", tmp_path, url=url, expected_sha1=payload_sha1, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert len(behaviour.requests) == 1


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsDownloadError, match="failed"):
        download_weights(
            "ti", tmp_path, url="http://127.0.0.1:9/nothing", progress=False, timeout_s=2
        )


def test_http_error_status(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    behaviour.status = 404
    with pytest.raises(WeightsDownloadError, match="HTTP 404"):
        download_weights("ti", tmp_path, url=url, progress=False)
    assert _payload_files(tmp_path) == []
