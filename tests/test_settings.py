"""Settings refuse unsafe values; ``python -m service`` says which one in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.services import free_port

REPO = Path(__file__).resolve().parents[1]


def run_service(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ESAM_")}
    return subprocess.run(
        [sys.executable, "-m", "service"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ESAM_PORT": "99999"}, "ESAM_PORT"),
        ({"ESAM_CACHE": "memcached"}, "ESAM_CACHE"),
        ({"ESAM_API_KEYS": "short"}, "ESAM_API_KEYS"),
        ({"ESAM_REDIS_URL": "http://localhost"}, "ESAM_REDIS_URL"),
        ({"ESAM_MAX_IMAGE_PIXELS": "500000000"}, "ESAM_MAX_IMAGE_PIXELS"),
        ({"ESAM_CACHE_TTL_S": "0"}, "ESAM_CACHE_TTL_S"),
        ({"ESAM_EMBEDDING_DTYPE": "int8"}, "ESAM_EMBEDDING_DTYPE"),
    ],
)
def test_bad_setting_stops_start_up_with_one_line(env: dict[str, str], named: str) -> None:
    result = run_service(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]


def test_unsafe_combinations_are_refused() -> None:
    with pytest.raises(ValidationError, match="cors_origins"):
        Settings(cors_origins=["*"], api_keys=["x" * 20])
    with pytest.raises(ValidationError, match="encoder_precision"):
        Settings(encoder_precision="bf16", encoder_device="cpu")


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESAM_API_KEYS", "a" * 16 + " , " + "b" * 16)
    monkeypatch.setenv("ESAM_CORS_ORIGINS", "https://label.example.com,https://cvat.example.com")
    settings = Settings()
    assert settings.api_keys == ["a" * 16, "b" * 16]
    assert settings.cors_origins == ["https://label.example.com", "https://cvat.example.com"]
    assert "aaaa" not in repr(settings)  # keys never appear in logs of the settings


def test_no_checkpoint_and_no_download_explains_what_to_do(tmp_path: Path) -> None:
    result = run_service(
        {
            "ESAM_WEIGHTS_DIR": str(tmp_path),
            "ESAM_PORT": str(free_port()),
            # every download goes through a proxy that refuses connections at once
            "HTTPS_PROXY": f"http://127.0.0.1:{free_port()}",
            "HTTP_PROXY": f"http://127.0.0.1:{free_port()}",
        }
    )
    assert result.returncode == 1
    assert "ESAM_CHECKPOINT" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.glob("*.pt")) == []
