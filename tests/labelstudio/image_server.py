"""A real HTTP server on loopback standing in for an image host (and for Label Studio's
``/data/...`` file paths, which need ``Authorization: Token <key>``), recording every
request it receives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    path: str
    authorization: str | None
    host: str | None


@dataclass
class ImageServer:
    host: str
    port: int
    files: dict[str, bytes] = field(default_factory=dict)
    token: str | None = None  # required for /data/ paths when set
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            authorization = self.headers.get("Authorization")
            server.seen.append(Seen(self.path, authorization, self.headers.get("Host")))
            if parts.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", query["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = parts.path
            if path == "/slow":  # ?s=<seconds>[&then=<a file's path>]
                time.sleep(float(query.get("s", ["5"])[0]))
                path = query.get("then", [path])[0]
            if parts.path == "/chunked":  # no Content-Length: the size shows while reading
                size = int(query["bytes"][0])
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, size, 65536):
                    chunk = b"\0" * min(65536, size - start)
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            keyed = parts.path.startswith("/data/") and server.token is not None
            if keyed and authorization != f"Token {server.token}":
                self.send_error(401)
                return
            body = server.files.get(path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def image_server(host: str = "127.0.0.1", token: str | None = None) -> Iterator[ImageServer]:
    state = ImageServer(host, 0, token=token)
    httpd = ThreadingHTTPServer((host, 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
