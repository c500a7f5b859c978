"""A real tritonserver (from nvidia-pytriton) serving the project's model repository on CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.devtools.triton import LocalTriton, TritonNotAvailableError
from tests.conftest import Fixture
from tests.services import free_port


def start_triton(workdir: Path, checkpoint: Path, **options: Any) -> LocalTriton:
    server = LocalTriton(
        workdir,
        str(checkpoint),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=workdir / "tritonserver.log",
        **options,
    )
    try:
        server.start()
    except TritonNotAvailableError as exc:
        log = (
            server.log_path.read_text()[-3000:]
            if server.log_path and server.log_path.exists()
            else ""
        )
        message = f"local Triton could not start: {exc}\n{log}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return server


@pytest.fixture(scope="session")
def triton(fixture: Fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """The pipeline with FP32 between preprocessing and encoder, plus an FP16 variant."""
    server = start_triton(
        tmp_path_factory.mktemp("triton"), fixture.checkpoint, extra_wires=("fp16",)
    )
    try:
        yield server
    finally:
        server.stop()
