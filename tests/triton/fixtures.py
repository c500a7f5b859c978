"""A real tritonserver (from nvidia-pytriton) serving the project's model repository on CPU."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.triton import LocalTriton, TritonNotAvailableError
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
        log_verbose=1,  # each request's way through the server, for a failure's report
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
    """The pipeline with FP32 between preprocessing and encoder, plus an FP16 variant,
    and the decoder."""
    server = start_triton(
        tmp_path_factory.mktemp("triton"), fixture.checkpoint, extra_wires=("fp16",), decoder=True
    )
    try:
        yield server
    finally:
        server.stop()


#: How much of a server's log a failed test's report shows.
REPORT_LOG_LINES = 300
_log_offsets = pytest.StashKey[dict[str, int]]()


def _servers(item: pytest.Item) -> dict[str, LocalTriton]:
    funcargs = getattr(item, "funcargs", {})
    return {name: value for name, value in funcargs.items() if isinstance(value, LocalTriton)}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, None]:
    item.stash[_log_offsets] = {
        name: server.log_path.stat().st_size
        for name, server in _servers(item).items()
        if server.log_path is not None and server.log_path.exists()
    }
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed test that used a Triton fixture reports that server's queue and what it
    logged during the test (its log lives in pytest's temporary folder, which CI loses)."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    offsets = item.stash.get(_log_offsets, {})
    for name, server in _servers(item).items():
        report.sections.append(
            (f"Triton fixture {name!r}", server_report(server, offsets.get(name, 0)))
        )


def server_report(server: LocalTriton, log_offset: int) -> str:
    lines = []
    try:
        metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=2).text
        lines += [m for m in metrics.splitlines() if m.startswith("nv_inference_pending")]
    except httpx.HTTPError as exc:
        lines.append(f"metrics not read: {exc!r}")
    if server.log_path is not None and server.log_path.exists():
        with server.log_path.open("rb") as log:
            log.seek(log_offset)
            during = log.read().decode(errors="replace").splitlines()
        lines += [f"--- {server.log_path} during the test, last {REPORT_LOG_LINES} lines"]
        lines += during[-REPORT_LOG_LINES:]
    return "\n".join(lines)
