"""The real gateway as a child process (``python -m service``), for benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from devtools.redis_server import free_port

REPO = Path(__file__).resolve().parents[1]


def wait_ready(
    process: subprocess.Popen[bytes], url: str, timeout_s: float, name: str, poll_s: float = 0.2
) -> None:
    """Until ``url`` answers 200: RuntimeError if ``process`` exits, TimeoutError past
    ``timeout_s`` (the caller stops the process)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not become ready in {timeout_s:.0f} s")
        time.sleep(poll_s)


class GatewayProcess:
    """``with GatewayProcess({"ESAM_CHECKPOINT": ...}) as gw:`` — started and ready on a free port.

    The environment is the caller's without any ``ESAM_*`` variable, plus ``settings``.
    """

    def __init__(
        self,
        settings: dict[str, str],
        *,
        ready_timeout_s: float = 180,
        stdout: Path | None = None,
        stderr: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ESAM_")},
            "ESAM_PORT": str(self.port),
            "ESAM_LOG_LEVEL": "warning",
            **settings,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.stdout, self.stderr = stdout, stderr  # files for the process's output, if given

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with contextlib.ExitStack() as files:
            out = files.enter_context(self.stdout.open("ab")) if self.stdout else None
            err = files.enter_context(self.stderr.open("ab")) if self.stderr else None
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service"], env=self.env, cwd=REPO, stdout=out, stderr=err
            )
        try:
            wait_ready(self.process, f"{self.url}/readyz", self.ready_timeout_s, "the gateway")
        except TimeoutError:
            self.stop()
            raise

    def stop(self, timeout_s: float = 60) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = self.process.returncode
        self.process = None
        return code

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
