"""Settings refuse unsafe values; ``python -m service`` says which one in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings

from service.core.cache.redis_client import RedisTarget, redis_urls
from service.core.encoders.triton_targets import parse_targets
from service.core.loading import resolve_checkpoint
from service.errors import CheckpointError
from service.fetch_weights import main as weights_main
from service.settings import CacheSettings, Settings
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
        ({"ESAM_EMBEDDING_DTYPE": "int4"}, "ESAM_EMBEDDING_DTYPE"),
    ],
)
@pytest.mark.slow
def test_bad_setting_stops_start_up_with_one_line(env: dict[str, str], named: str) -> None:
    result = run_service(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]


@pytest.mark.parametrize(
    ("variable", "suggested"),
    [
        ("ESAM_MAX_PENDING_ENCODE", "ESAM_MAX_PENDING_ENCODES"),
        ("ESAM_REDIS_TIMEOUT", "ESAM_REDIS_TIMEOUT_S"),
        ("ESAM_ENCODER_QUEUE_SIZE", "ESAM_MAX_PENDING_ENCODES"),  # folded into it
    ],
)
@pytest.mark.slow
def test_unknown_variable_stops_start_up_naming_the_closest(variable: str, suggested: str) -> None:
    result = run_service({variable: "3"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert suggested in lines[0]


def test_variables_that_are_not_settings_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESAM_FIXTURES_DIR", "/somewhere")
    Settings()
    monkeypatch.setenv("ESAM_NO_SUCH_THING", "1")
    with pytest.raises(ValidationError, match="ESAM_NO_SUCH_THING"):
        Settings()


def test_the_lock_wait_covers_a_whole_encode() -> None:
    settings = Settings(encode_timeout_s=40, lock_ttl_s=5)
    assert settings.lock_wait == 45  # a peer's encode may take the whole deadline
    assert Settings(lock_wait_s=3).lock_wait == 3


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


@pytest.mark.slow
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


def test_the_demo_page_is_on_by_default_only_when_embedded() -> None:
    assert Settings().ui_enabled
    assert not Settings(encoder="triton").ui_enabled
    assert Settings(encoder="triton", ui=True).ui_enabled
    assert not Settings(ui=False).ui_enabled


def test_the_weights_directory_is_a_setting_the_downloader_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every download fails at once (a proxy that refuses connections): only where it
    # would have landed is of interest, and the downloader's lock file says so
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    gateway_dir, cli_dir = tmp_path / "gateway", tmp_path / "cli"
    with pytest.raises(CheckpointError):
        resolve_checkpoint(Settings(weights_dir=gateway_dir))
    assert (gateway_dir / "efficient_sam_vitt.pt.lock").exists()
    monkeypatch.setenv("ESAM_WEIGHTS_DIR", str(cli_dir))
    assert weights_main(["ti"]) == 1
    assert (cli_dir / "efficient_sam_vitt.pt.lock").exists()


def test_every_setting_belongs_to_one_group_of_its_concern() -> None:
    groups = [
        base
        for base in Settings.__bases__
        if issubclass(base, BaseModel) and base is not BaseSettings
    ]
    assert len(groups) >= 8
    owned = [name for group in groups for name in group.model_fields]
    assert len(owned) == len(set(owned))
    assert sorted(owned) == sorted(Settings.model_fields)  # none declared on Settings itself
    assert "redis_url" in CacheSettings.model_fields
    with pytest.raises(ValidationError, match="redis://"):
        CacheSettings(redis_url="http://localhost")  # a group checks its own fields


@pytest.mark.parametrize(
    ("settings", "parser"),
    [
        (
            {"triton_url": "grpc://no such host:8001"},
            lambda: parse_targets("grpc://no such host:8001"),
        ),
        ({"triton_url": "grpc://a:99999"}, lambda: parse_targets("grpc://a:99999")),
        (
            {"redis_url": "redis://a:6379,redis://b:6379"},
            lambda: RedisTarget.parse("standalone", "redis://a:6379,redis://b:6379", "m"),
        ),
        ({"redis_url": "unix:/tmp/no-slashes"}, lambda: redis_urls("unix:/tmp/no-slashes")),
    ],
)
def test_urls_are_refused_at_start_up_by_the_parser_that_uses_them(
    settings: dict[str, str], parser: Callable[[], object]
) -> None:
    with pytest.raises(ValueError) as by_parser:  # noqa: PT011 - the message is compared below
        parser()
    with pytest.raises(ValidationError) as by_settings:
        Settings(**settings)  # type: ignore[arg-type]
    assert str(by_parser.value) in str(by_settings.value)
