"""A real local Triton Inference Server, from the ``nvidia-pytriton`` wheel, on CPU.

``python -m devtools.triton`` (``make triton``) derives a CPU model
repository from ``model_repository/`` (the same ``model.py`` files; the configs are
rewritten: ``KIND_CPU``, fp32, the chosen dtypes and batching), starts
the ``tritonserver`` bundled in ``nvidia-pytriton`` on the ports given, and
waits until the model is ready. Tests use :class:`LocalTriton` directly.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from devtools.prometheus import sample_sum
from devtools.triton_config import (
    DECODER,
    DTYPES,
    ENSEMBLE,
    MODEL,
    PIPELINE,
    SOURCE_REPOSITORY,
    cpu_configs,
    decoder_cpu_config,
    gpu_configs,
)

REPO = SOURCE_REPOSITORY.parent


class TritonNotAvailableError(RuntimeError):
    """nvidia-pytriton is not installed, or its server cannot run here."""


def pytriton_root() -> Path:
    """The tritonserver that nvidia-pytriton bundles, found without importing pytriton
    (whose own Python API and its dependencies are not needed here)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotAvailableError(
            "nvidia-pytriton is not installed: pip install -e '.[triton]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def prepare(
    workdir: Path,
    *,
    checkpoint: str,
    wire: str = "fp32",
    output: str = "fp32",
    max_batch: int = 2,
    queue_delay_us: int = 5000,
    extra_wires: tuple[str, ...] = (),
    gpu: bool = False,
    stand_in_encoder: bool = False,
    decoder: bool = False,
    decoder_resident_bytes: int = 256 << 20,
    decoder_max_batch: int = 8,
    stand_in_decoder: bool = False,
) -> tuple[Path, Path]:
    """Write the CPU model repository and a backends folder with the Python stub.

    With ``gpu``, the production (GPU) configurations are used as they are, but for
    the checkpoint path and ``max_batch``.

    The pipeline (``efficientsam`` = ``efficientsam_preprocess`` → ``efficientsam_encoder``);
    ``extra_wires`` adds one more pipeline per dtype of the tensor between preprocessing
    and encoder (``efficientsam_<wire>``, output FP32), so that one server can compare them.
    ``stand_in_encoder`` replaces the encoder's code with one that answers zeros at once
    (``devtools/stand_in_encoder.py``, for benchmarks of what surrounds it).
    ``decoder`` adds ``efficientsam_decoder`` (its CPU config, ``decoder_resident_bytes``
    of resident embeddings; the production config with ``gpu``); ``stand_in_decoder``
    replaces its code with one that answers compact discs at once
    (``devtools/stand_in_decoder.py``, for benchmarks of the gateway's side).
    """
    repository = workdir / "model_repository"
    shutil.rmtree(repository, ignore_errors=True)
    pipelines = {"": (wire, output), **{f"_{w}": (w, "fp32") for w in extra_wires}}
    for suffix, (model_wire, model_output) in pipelines.items():
        configs = cpu_configs(
            wire=model_wire,
            output=model_output,
            max_batch=max_batch,
            queue_delay_us=queue_delay_us,
            checkpoint=checkpoint,
            preprocess_instances=1 if suffix else 2,
            suffix=suffix,
        )
        if gpu:
            configs = gpu_configs(checkpoint=checkpoint, max_batch=max_batch)
        for name in PIPELINE:
            model_dir = repository / f"{name}{suffix}"
            shutil.copytree(
                SOURCE_REPOSITORY / name,
                model_dir,
                ignore=shutil.ignore_patterns("__pycache__", "config.pbtxt", "configs"),
            )
            (model_dir / "config.pbtxt").write_text(configs[f"{name}{suffix}"])
            if stand_in_encoder and name == MODEL:
                shutil.copy2(
                    Path(__file__).with_name("stand_in_encoder.py"), model_dir / "1" / "model.py"
                )
    if decoder:
        model_dir = repository / DECODER
        shutil.copytree(
            SOURCE_REPOSITORY / DECODER,
            model_dir,
            ignore=shutil.ignore_patterns("__pycache__", "config.pbtxt", "configs"),
        )
        text = decoder_cpu_config(
            checkpoint=checkpoint,
            resident_bytes=decoder_resident_bytes,
            max_batch=decoder_max_batch,
        )
        if gpu:
            text = (SOURCE_REPOSITORY / DECODER / "config.pbtxt").read_text()
            text = text.replace("/weights/efficient_sam_vitt.pt", checkpoint)
        (model_dir / "config.pbtxt").write_text(text)
        if stand_in_decoder:
            shutil.copy2(
                Path(__file__).with_name("stand_in_decoder.py"), model_dir / "1" / "model.py"
            )
    return repository, prepare_backends(workdir)


def prepare_backends(workdir: Path) -> Path:
    """A backends folder with the Python backend and the stub for this Python."""
    root = pytriton_root()
    backends = workdir / "backends"
    python_backend = backends / "python"
    shutil.rmtree(backends, ignore_errors=True)
    python_backend.mkdir(parents=True)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            (python_backend / item.name).symlink_to(item)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonNotAvailableError(f"no Triton Python backend stub for Python {version}")
    shutil.copy2(stub, python_backend / stub.name)
    return backends


def tritonserver_binary() -> Path:
    return pytriton_root() / "bin" / "tritonserver"


def server_environment() -> dict[str, str]:
    """What the bundled tritonserver needs: its libraries, and this environment's Python
    (the Python backend imports torch and this project from it)."""
    site = pytriton_root().parents[1]
    return {
        **os.environ,
        "LD_LIBRARY_PATH": ":".join(
            filter(None, [str(site / "nvidia_pytriton.libs"), os.environ.get("LD_LIBRARY_PATH")])
        ),
        "PYTHONPATH": ":".join(
            filter(None, [str(REPO), *sys.path[1:], os.environ.get("PYTHONPATH")])
        ),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
    }


@dataclass
class LocalTriton:
    """A ``tritonserver`` process serving the CPU repository."""

    workdir: Path
    checkpoint: str
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    wire: str = "fp32"
    output: str = "fp32"
    max_batch: int = 2
    queue_delay_us: int = 5000
    log_path: Path | None = None
    address: str = "127.0.0.1"
    extra_wires: tuple[str, ...] = ()
    gpu: bool = False
    stand_in_encoder: bool = False
    decoder: bool = False
    decoder_resident_bytes: int = 256 << 20
    decoder_max_batch: int = 8
    stand_in_decoder: bool = False
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()  # more tritonserver options, e.g. memory pools
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _prepared: tuple[Path, Path] | None = field(default=None, init=False)
    _log: BinaryIO | None = field(default=None, init=False)

    @staticmethod
    def model_for_wire(wire: str) -> str:
        """Name of the extra pipeline whose encoder takes ``wire`` (see ``extra_wires``)."""
        return f"{ENSEMBLE}_{wire}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 180) -> None:
        if self._prepared is None:
            self._prepared = prepare(
                self.workdir,
                checkpoint=self.checkpoint,
                wire=self.wire,
                output=self.output,
                max_batch=self.max_batch,
                queue_delay_us=self.queue_delay_us,
                extra_wires=self.extra_wires,
                gpu=self.gpu,
                stand_in_encoder=self.stand_in_encoder,
                decoder=self.decoder,
                decoder_resident_bytes=self.decoder_resident_bytes,
                decoder_max_batch=self.decoder_max_batch,
                stand_in_decoder=self.stand_in_decoder,
            )
        repository, backends = self._prepared
        env = server_environment()
        if self.log_path is not None and self._log is None:
            self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            [
                str(tritonserver_binary()),
                f"--model-repository={repository}",
                f"--backend-directory={backends}",
                f"--http-port={self.http_port}",
                f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}",
                f"--http-address={self.address}",
                f"--grpc-address={self.address}",
                f"--metrics-address={self.address}",
                "--allow-metrics=true",
                f"--allow-gpu-metrics={'true' if self.gpu else 'false'}",
                "--allow-cpu-metrics=false",
                f"--log-verbose={self.log_verbose}",
                "--exit-on-error=true",
                "--strict-readiness=true",
                *self.extra_args,
            ],
            env=env,
            stdout=self._log if self._log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"{self.http_url}/v2/health/ready"  # strict readiness: every model ready
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise TritonNotAvailableError(
                    f"tritonserver exited with {code}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TritonNotAvailableError(f"{ENSEMBLE} was not ready within {timeout_s:g}s")

    def stop(self) -> None:
        if self.process is None:
            return
        self._terminate()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _terminate(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def metrics_text(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def counter(self, metric: str, model: str = MODEL, settle_s: float = 5.0) -> float:
        """One of Triton's per-model counters (``nv_inference_exec_count``, ...), once it
        holds still: Triton counts a request when it releases it, which can be just after
        its client has the answer (two reads 0.15 s apart agree, or ``settle_s`` passed)."""
        value = sample_sum(self.metrics_text(), metric, model=model)
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            time.sleep(0.15)
            again = sample_sum(self.metrics_text(), metric, model=model)
            if again == value:
                break
            value = again
        return value


def grpc_request_of(infer_input: Any, outputs: list[Any], model: str = ENSEMBLE) -> Any:
    """The ``ModelInferRequest`` protobuf tritonclient sends for these inputs (its size is
    what travels to Triton per image)."""
    from tritonclient.grpc._utils import _get_inference_request

    return _get_inference_request(
        model_name=model,
        inputs=[infer_input],
        model_version="",
        request_id="",
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local CPU Triton with the encoder.")
    parser.add_argument(
        "--checkpoint",
        default=os.environ.get("ESAM_CHECKPOINT", ""),
        help="checkpoint path, or 'random' (default: $ESAM_CHECKPOINT)",
    )
    parser.add_argument(
        "--http-port", type=int, default=int(os.environ.get("TRITON_HTTP_PORT", 8000))
    )
    parser.add_argument(
        "--grpc-port", type=int, default=int(os.environ.get("TRITON_GRPC_PORT", 8001))
    )
    parser.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("TRITON_METRICS_PORT", 8002))
    )
    parser.add_argument("--wire", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--output", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--max-batch", type=int, default=2)
    parser.add_argument("--queue-delay-us", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "triton")
    args = parser.parse_args(argv)
    if not args.checkpoint:
        from service.errors import WeightsDownloadError
        from service.model.weights import download_weights

        try:
            args.checkpoint = str(download_weights("ti"))
        except WeightsDownloadError as exc:
            print(
                f"error: no checkpoint given and the official one could not be downloaded "
                f"({exc}); set ESAM_CHECKPOINT to a checkpoint path, or 'random'",
                file=sys.stderr,
            )
            return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    server = LocalTriton(
        args.workdir,
        str(Path(args.checkpoint).resolve()) if args.checkpoint != "random" else "random",
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        wire=args.wire,
        output=args.output,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        log_path=args.workdir / "tritonserver.log",
    )
    try:
        server.start()
    except TritonNotAvailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"triton ready: grpc {server.grpc_url}, http {server.http_url}, "
        f"metrics http://127.0.0.1:{args.metrics_port}/metrics (log: {server.log_path}); "
        "Ctrl-C stops it"
    )
    try:
        assert server.process is not None
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
