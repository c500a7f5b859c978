"""Schemathesis with every check against the service's own OpenAPI document.

All of Schemathesis's checks (``--checks all``: no 5xx, documented statuses, content
types, headers and bodies; schema-valid requests accepted, schema-invalid ones
refused; ``Allow`` on 405) over its four phases: the document's examples, coverage of
every keyword's boundaries, random fuzzing, and the stateful phase following the
OpenAPI links from /embed to /segment and /embeddings. The rules JSON Schema cannot
state (an image's bytes, coordinates inside it) are taught to its generators by
``tests/gateway/schemathesis_hooks.py``, never by relaxing a check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.gateway_process import REPO, GatewayProcess
from tests.conftest import Fixture

# a browser, Redis Cluster/Sentinel, a fuzzer or a client generator: not in `make test-fast`
pytestmark = pytest.mark.slow

SEED = "20261129"
MAX_EXAMPLES = 30  # per operation in the fuzzing phase; the run is deterministic
KEY = "fuzz-key-0123456789abcdef"
#: Schemathesis's default statuses that count as a refusal, plus 413: a body over
#: ESAM_MAX_IMAGE_BYTES is refused as too large (the document says so), not as invalid
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429", "5xx"]
"""


def test_schemathesis_every_check_passes(fixture: Fixture, tmp_path: Path) -> None:
    binary = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(binary).exists():
        pytest.fail("schemathesis is not installed (a dev dependency)")
    gateway = GatewayProcess(
        {
            "ESAM_CHECKPOINT": str(fixture.checkpoint),
            "ESAM_API_KEYS": KEY,
            "ESAM_MAX_IMAGE_BYTES": str(256 * 1024),
            # segment-everything jobs of at most 21 prompts (a 4×4 grid, 2×2 on 5 crops,
            # 1 point on 21): a fraction of a second each on this CPU, every depth allowed
            "ESAM_MAX_EVERYTHING_PROMPTS": "21",
            # room for every generated image and its crops: none is encoded twice
            "ESAM_MEMORY_CACHE_MB": "2048",
        }
    )
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.gateway.schemathesis_hooks"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    gateway.start()
    try:
        report = tmp_path / "report.json"
        result = subprocess.run(
            [
                binary,
                "run",
                f"{gateway.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {KEY}",
                "--checks",
                "all",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                SEED,
                "--workers",
                "1",
                "--request-timeout",
                "120",
                # a new image with two crop layers is 21 encodes on this CPU
                "--max-response-time",
                "120",
                "--suppress-health-check",
                "all",
                "--report",
                "json",
                "--report-json-path",
                str(report),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    finally:
        gateway.stop()
    data = json.loads(report.read_text())
    assert data["complete"] is True
    assert data["operations"]["tested"] == data["operations"]["total"] >= 14
    assert data["failures"] == []
    assert data["errors"] == []
    cases = data["test_cases"]
    assert cases["generated"] >= 1400, cases  # the report quoted in docs/reliability.md
    assert cases["with_failures"] == 0
    for phase in ("examples", "coverage", "fuzzing", "stateful"):
        assert data["phases"][phase]["status"] == "success", (phase, data["phases"])
