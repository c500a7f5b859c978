"""The demo page's optional in-browser decoder: onnxruntime-web's files (installed by
``make ui-assets`` into ``ESAM_UI_ASSETS_DIR``) and the serving model's mask decoder as
ONNX, exported once per model id into ``<assets>/models/`` by a child process (the
export traces the model; it must not run beside the gateway's own decodes, and its
memory goes back to the OS when it ends).

The page decodes a click with the same graph the gateway runs: prompt encoder and mask
decoder (``service.model.onnx_export.export_decoder``), fed the cached embedding as
float16 (int8 records dequantised by the gateway).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

import torch

from service.core.loading import LoadedModel

#: where onnxruntime-web keeps its browser builds, below the assets folder
ORT_DIST: Final = Path("node_modules/onnxruntime-web/dist")
#: the WebAssembly (CPU) build only: the module, its Emscripten loader and the binary
ORT_FILES: Final = {
    "ort.wasm.min.mjs": "text/javascript",
    "ort-wasm-simd-threaded.mjs": "text/javascript",
    "ort-wasm-simd-threaded.wasm": "application/wasm",
}
EXPORT_TIMEOUT_S: Final = 600


def available(assets_dir: Path) -> bool:
    """onnxruntime-web's files are installed and the ONNX exporter can run."""
    if importlib.util.find_spec("onnxscript") is None:  # the `onnx` extra
        return False
    return all((assets_dir / ORT_DIST / name).is_file() for name in ORT_FILES)


def ort_file(assets_dir: Path, name: str) -> tuple[Path, str] | None:
    """(path, media type) of one of onnxruntime-web's files, or None."""
    media_type = ORT_FILES.get(name)
    if media_type is None or not available(assets_dir):
        return None
    return assets_dir / ORT_DIST / name, media_type


class DecoderExport:
    """``<assets>/models/<model id>.onnx``, exported on first use; one export at a time."""

    def __init__(self, loaded: LoadedModel, assets_dir: Path) -> None:
        self._loaded = loaded
        self.path = assets_dir / "models" / f"{loaded.model_id}.onnx"
        self._lock = asyncio.Lock()

    async def ready(self) -> Path:
        async with self._lock:
            if not self.path.is_file():
                await asyncio.to_thread(self._export)
            return self.path

    def _export(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.path.parent) as workdir:
            weights = Path(workdir) / "weights.pt"
            state = {k: v.detach().cpu() for k, v in self._loaded.model.state_dict().items()}
            torch.save({"model": state}, weights)
            out = Path(workdir) / "decoder.onnx"
            done = subprocess.run(  # noqa: S603 - our own module, our own paths
                [
                    sys.executable,
                    "-m",
                    "service.model.onnx_export",
                    "--checkpoint",
                    str(weights),
                    "--decoder",
                    str(out),
                ],
                capture_output=True,
                text=True,
                timeout=EXPORT_TIMEOUT_S,
            )
            if done.returncode != 0:
                raise RuntimeError(f"decoder export failed: {done.stderr.strip()[-2000:]}")
            os.replace(out, self.path)  # whole or absent: a reader never sees half a file
