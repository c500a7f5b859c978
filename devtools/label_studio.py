"""A real Label Studio for tests and benchmarks: ``label-studio==1.23.2`` in its own venv
under ``build/label-studio`` (installed on first use, reused after), started headless on a
free port with a known user token, and ``label_studio_sdk`` from that venv as an oracle.

Its dependencies (Django 5.2, label-studio-sdk 2.1.2, ...) stay out of the project's venv.

    with LabelStudioServer(tmp_path) as ls:
        ls.api("POST", "/api/projects", json={...})
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from devtools.gateway_process import REPO, wait_ready
from devtools.redis_server import free_port

VERSION = "1.23.2"
VENV = REPO / "build" / "label-studio"
PYTHON = VENV / "bin" / "python"
TOKEN = "esam-test-token-0123456789"  # noqa: S105 - the test user's legacy token
USER = "admin@example.com"


def ensure_venv() -> Path:
    """``build/label-studio`` with label-studio==1.23.2 (a minute on first use)."""
    stamp = VENV / f".label-studio-{VERSION}"
    if stamp.is_file():
        return PYTHON
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)  # noqa: S603
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)  # noqa: S603 - pinned, PyPI
    subprocess.run([*pip, f"label-studio=={VERSION}"], check=True)  # noqa: S603 - pinned
    stamp.touch()
    return PYTHON


def sdk_call(script: str, payload: Any) -> Any:
    """Run ``script`` in Label Studio's venv with ``payload`` (JSON) on stdin; its stdout
    is JSON. For the label_studio_sdk oracle (``converter.brush``)."""
    python = ensure_venv()
    done = subprocess.run(  # noqa: S603 - our script, Label Studio's venv
        [str(python), "-c", script],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(done.stdout)


class LabelStudioServer:
    """Label Studio started in ``workdir`` (its data, its log), ready and with ``TOKEN``."""

    def __init__(self, workdir: Path, *, ready_timeout_s: float = 300) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        self.log = workdir / "label-studio.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        python = ensure_venv()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "ESAM_"))},
            "LABEL_STUDIO_USERNAME": USER,
            "LABEL_STUDIO_PASSWORD": "esam-test-password",
            "LABEL_STUDIO_USER_TOKEN": TOKEN,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            # a backend on loopback: the ML URL check and the webhook it registers
            "ML_BLOCK_LOCAL_IP": "false",
            "USE_DEFAULT_BANNED_SUBNETS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }
        command = [
            str(python.parent / "label-studio"),
            "start",
            "--no-browser",
            "--data-dir",
            str(self.workdir / "data"),
            "--port",
            str(self.port),
            "--host",
            self.url,
            "--internal-host",
            "127.0.0.1",
            "--enable-legacy-api-token",
        ]
        with self.log.open("ab") as log:
            # its own process group: runserver's children stop with it
            self.process = subprocess.Popen(  # noqa: S603 - the pinned label-studio
                command,
                env=env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_ready(self.process, f"{self.url}/health", self.ready_timeout_s, "Label Studio", 1)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}; see {self.log}") from exc

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A call with the user's token (legacy ``Token`` scheme)."""
        headers = {"Authorization": f"Token {TOKEN}", **kwargs.pop("headers", {})}
        return httpx.request(
            method,
            f"{self.url}{path}",
            headers=headers,
            timeout=kwargs.pop("timeout", 300),
            **kwargs,
        )

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> LabelStudioServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
