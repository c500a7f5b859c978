"""Schemathesis against the service's own OpenAPI schema: no 5xx, every response as documented."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.devtools.gateway_process import GatewayProcess
from tests.conftest import Fixture

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
    gateway = GatewayProcess(
        {
            "ESAM_CHECKPOINT": str(fixture.checkpoint),
            "ESAM_MAX_IMAGE_BYTES": str(256 * 1024),
            # segment-everything jobs of at most an 8×8 grid: seconds each on this CPU
            "ESAM_MAX_EVERYTHING_PROMPTS": "64",
        }
    )
    gateway.start()
    try:
        url = gateway.url
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
        gateway.stop()
    data = json.loads(report.read_text())
    assert data["complete"] is True
    assert data["operations"]["tested"] == data["operations"]["total"] >= 8
    assert data["failures"] == []
    assert data["errors"] == []
    cases = data["test_cases"]
    assert cases["generated"] >= 300, cases  # the report quoted in docs/reliability.md
    assert data["phases"]["stateful"]["status"] == "success"  # it followed the OpenAPI links
    assert cases["with_failures"] == 0
