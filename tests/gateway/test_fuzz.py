"""Schemathesis against the service's own OpenAPI schema: no 5xx, every response as documented."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Fixture
from tests.services import free_port

REPO = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 25  # per operation; the run is deterministic (fixed seed)
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


def test_schemathesis_finds_no_server_error(fixture: Fixture, tmp_path: Path) -> None:
    binary = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(binary).exists():
        pytest.fail("schemathesis is not installed (a dev dependency)")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESAM_")},
        "ESAM_CHECKPOINT": str(fixture.checkpoint),
        "ESAM_PORT": str(port),
        "ESAM_MAX_IMAGE_BYTES": str(256 * 1024),
        "ESAM_LOG_LEVEL": "warning",
    }
    gateway = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert gateway.poll() is None, "the gateway exited"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.2)
        report = tmp_path / "report.json"
        result = subprocess.run(
            [
                binary,
                "run",
                f"{url}/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                "20261128",
                "--workers",
                "1",
                "--request-timeout",
                "60",
                "--suppress-health-check",
                "all",
                "--report",
                "json",
                "--report-json-path",
                str(report),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    finally:
        gateway.terminate()
        gateway.wait(60)
    data = json.loads(report.read_text())
    assert data["complete"] is True
    assert data["operations"]["tested"] == data["operations"]["total"] >= 8
    assert data["failures"] == []
    assert data["errors"] == []
    cases = data["test_cases"]
    assert cases["generated"] >= 200, cases  # the report quoted in docs/reliability.md
    assert cases["with_failures"] == 0
