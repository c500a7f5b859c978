"""The demo page's in-browser decoder, as the gateway serves it: onnxruntime-web's files,
the decoder exported to ONNX (checked against the model itself), the key on the weights,
and a page that stays as it was when the assets are not installed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from devtools.gateway_process import REPO
from service.gateway.ui.browser_decoder import ORT_DIST, ORT_FILES, available
from service.model import EfficientSam
from tests.gateway.fixtures import GatewayFactory
from tests.support import assert_error, png_bytes

# a browser, Redis Cluster/Sentinel, a fuzzer or a client generator: not in `make test-fast`
pytestmark = pytest.mark.slow

KEY = "ui-decoder-key-0123456789"
INSTALLED = REPO / "build" / "ui-assets"


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    """An assets folder of its own (so the export runs afresh) on `make ui-assets`' files."""
    assert available(INSTALLED), "onnxruntime-web is not installed: run `make ui-assets`"
    folder = tmp_path / "ui-assets"
    folder.mkdir()
    (folder / "node_modules").symlink_to(INSTALLED / "node_modules", target_is_directory=True)
    return folder


async def test_without_the_assets_the_page_decodes_on_the_server_only(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    async with gateway_factory(ui_assets_dir=tmp_path / "none", api_keys=[KEY]) as gw:
        assert (await gw.client.get("/ui/config.json")).json()["browser_decoder"] is False
        page = await gw.client.get("/ui")
        assert "wasm-unsafe-eval" not in page.headers["Content-Security-Policy"]
        assert "script-src 'self';" in page.headers["Content-Security-Policy"]
        assert "Cross-Origin-Embedder-Policy" not in page.headers  # nothing to isolate for
        assert_error(await gw.client.get("/ui/ort/ort.wasm.min.mjs"), 404, "not_found")
        keyed = {"Authorization": f"Bearer {KEY}"}
        missing = await gw.client.get("/ui/models/decoder.onnx", headers=keyed)
        assert_error(missing, 404, "not_found")
        assert not (tmp_path / "none").exists()  # nothing exported, nothing written


async def test_onnxruntime_web_files_are_served_with_their_media_types(
    gateway_factory: GatewayFactory, assets: Path
) -> None:
    async with gateway_factory(ui_assets_dir=assets) as gw:
        assert (await gw.client.get("/ui/config.json")).json()["browser_decoder"] is True
        policy = (await gw.client.get("/ui")).headers["Content-Security-Policy"]
        assert "script-src 'self' 'wasm-unsafe-eval';" in policy  # WebAssembly, no eval
        assert "connect-src 'self'" in policy
        page = await gw.client.get("/ui")
        assert page.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert page.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        for name, media_type in ORT_FILES.items():
            served = await gw.client.get(f"/ui/ort/{name}")
            assert served.status_code == 200, name
            assert served.headers["content-type"].startswith(media_type)
            assert served.content == (assets / ORT_DIST / name).read_bytes()
        # only those three files: nothing else of node_modules is reachable
        for name in ("package.json", "ort.all.min.mjs", "..%2F..%2Fpackage.json"):
            assert_error(await gw.client.get(f"/ui/ort/{name}"), 404, "not_found")
        module = await gw.client.get("/ui/browser-decoder.js")
        assert module.headers["content-type"].startswith("text/javascript")


async def test_the_exported_decoder_needs_the_key_and_decodes_as_the_model(
    gateway_factory: GatewayFactory, assets: Path, fixture_model: EfficientSam
) -> None:
    async with gateway_factory(ui_assets_dir=assets, api_keys=[KEY]) as gw:
        assert_error(await gw.client.get("/ui/models/decoder.onnx"), 401, "unauthorized")
        keyed = {"Authorization": f"Bearer {KEY}"}
        served = await gw.client.get("/ui/models/decoder.onnx", headers=keyed)
        assert served.status_code == 200
        model_id = (await gw.client.get("/ui/config.json")).json()["model"]
        assert served.headers["X-Model"] == model_id
        exported = assets / "models" / f"{model_id}.onnx"
        assert exported.read_bytes() == served.content
        assert [p.name for p in exported.parent.iterdir()] == [exported.name]  # no leftovers
        stamp = exported.stat().st_mtime_ns
        again = await gw.client.get("/ui/models/decoder.onnx", headers=keyed)
        assert again.content == served.content
        assert exported.stat().st_mtime_ns == stamp  # exported once per model
        # the page's embedding (.npy from /embed) in onnxruntime against the model itself
        embed = await gw.client.post(
            "/embed",
            content=png_bytes(),
            headers={**keyed, "Content-Type": "image/png", "Accept": "application/x-npy"},
        )
        assert embed.status_code == 200
    session = ort.InferenceSession(served.content, providers=["CPUExecutionProvider"])
    embedding = np.load(io.BytesIO(embed.content)).astype(np.float32)
    points = np.full((2, 6, 2), -1.0, dtype=np.float32)
    labels = np.full((2, 6), -1.0, dtype=np.float32)
    points[0, :2] = [[100.0, 200.0], [700.0, 300.0]]  # a box's corners (model frame)
    labels[0, :2] = [2, 3]
    points[1, :2] = [[512.0, 512.0], [50.0, 900.0]]  # a foreground and a background point
    labels[1, :2] = [1, 0]
    logits, iou = session.run(
        None, {"image_embeddings": embedding, "points": points, "labels": labels}
    )
    with torch.inference_mode():
        want_logits, want_iou = fixture_model.decode(
            torch.from_numpy(embedding),
            torch.from_numpy(points),
            torch.from_numpy(labels),
            multimask=True,
        )
    np.testing.assert_allclose(logits[:, 1:], want_logits.numpy(), atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(iou[:, 1:], want_iou.numpy(), atol=1e-4)
