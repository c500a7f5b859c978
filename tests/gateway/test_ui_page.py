"""The demo page at /ui in a real browser (Debian chromium, headless, via Playwright).

The annotator's path: open the page (no key needed for it), enter the API key, upload
the fixture image, click a point, see the mask; switch candidates; download the mask
as PNG and COCO JSON; "everything". The overlay is compared pixel by pixel with the
mask ``/segment`` returns for the same prompt, and no request leaves the gateway.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, Route, expect, sync_playwright
from pycocotools import mask as mask_utils

from devtools.gateway_process import REPO, GatewayProcess
from service.gateway.ui.browser_decoder import available
from tests.conftest import Fixture
from tests.model.conformance import mask_iou
from tests.support import chromium_path

# a browser, Redis Cluster/Sentinel, a fuzzer or a client generator: not in `make test-fast`
pytestmark = pytest.mark.slow

KEY = "ui-test-key-0123456789"
ARTIFACTS = REPO / "build" / "test-artifacts"
#: the page's CSP forbids eval, so the test waits with Playwright's assertions (which need
#: none), never with wait_for_function (which evals its predicate in the page)
SLOW_MS = 180_000


def overlay(page: Page) -> tuple[dict[str, Any], np.ndarray]:
    """The page's state and the overlay canvas's alpha channel."""
    state = json.loads(page.eval_on_selector("#overlay", "c => c.dataset.state"))
    alpha = page.evaluate(
        """() => {
            const c = document.getElementById('overlay');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const alpha = [];
            for (let i = 3; i < data.length; i += 4) alpha.push(data[i]);
            return [c.width, c.height, alpha];
        }"""
    )
    width, height, values = alpha
    return state, np.asarray(values, dtype=np.uint8).reshape(height, width)


def agreement(alpha: np.ndarray, mask: np.ndarray) -> float:
    """Share of canvas pixels where 'overlay drawn' equals the mask at that image pixel."""
    height, width = alpha.shape
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1)
    expected = mask[rows.astype(int)][:, cols.astype(int)]
    return float(np.mean((alpha > 0) == expected))


@contextmanager
def demo_page(
    gateway: GatewayProcess,
    viewport: tuple[int, int] = (1400, 900),
    device_scale_factor: float = 1,
) -> Iterator[tuple[Page, list[str]]]:
    """A headless chromium page whose requests are recorded; any that would leave the
    gateway is refused."""
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            context = browser.new_context(
                accept_downloads=True,
                viewport={"width": viewport[0], "height": viewport[1]},
                device_scale_factor=device_scale_factor,
            )
            page = context.new_page()

            def only_the_gateway(route: Route) -> None:
                requested.append(route.request.url)
                if route.request.url.startswith(gateway.url + "/"):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", only_the_gateway)
            yield page, requested
        finally:
            browser.close()


def test_click_to_mask_in_a_real_browser(fixture: Fixture, tmp_path: Path) -> None:
    settings = {
        "ESAM_CHECKPOINT": str(fixture.checkpoint),
        "ESAM_UI_ASSETS_DIR": str(tmp_path / "no-assets"),  # the server path alone
        "ESAM_API_KEYS": KEY,
        "ESAM_MAX_EVERYTHING_PROMPTS": "64",  # "everything": an 8×8 grid on this CPU
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with GatewayProcess(settings) as gateway, demo_page(gateway) as (page, requested):
        response = page.goto(f"{gateway.url}/ui")
        assert response is not None
        assert response.status == 200  # no key for the page
        page.wait_for_selector("#key-field:not([hidden])")  # the gateway needs a key
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.set_input_files("#file", str(fixture.image_path))
        expect(page.locator("#status")).to_contain_text("click", timeout=SLOW_MS)

        box = page.locator("#marks").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
        expect(page.locator("#status")).to_contain_text("Mask in", timeout=SLOW_MS)
        state, alpha = overlay(page)
        assert (state["width"], state["height"]) == (1072, 603)
        assert state["prompt"]["labels"] == [1]
        page.screenshot(path=str(ARTIFACTS / "ui-click.png"))

        # the same prompt straight to the API: the page shows its best candidate
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {"image_id": state["imageId"], "prompts": [state["prompt"]], "multimask": True}
        api = httpx.post(f"{gateway.url}/segment", json=body, headers=headers, timeout=120)
        candidates = api.json()["results"][0]["candidates"]
        masks = [mask_utils.decode(c["mask"]).astype(bool) for c in candidates]
        assert page.text_content("#score") == f"{candidates[0]['score']:.3f}"
        assert agreement(alpha, masks[0]) > 0.99
        assert (alpha > 0).any() == masks[0].any()

        page.click("#candidates button[data-candidate='2']")
        state, alpha = overlay(page)
        assert state["selected"] == 2
        assert agreement(alpha, masks[2]) > 0.99

        with page.expect_download() as png_download:
            page.click("#download-png")
        png = Image.open(io.BytesIO(Path(png_download.value.path()).read_bytes()))
        assert png.size == (1072, 603)
        np.testing.assert_array_equal(np.asarray(png.convert("L")) > 0, masks[2])
        with page.expect_download() as coco_download:
            page.click("#download-coco")
        document = json.loads(Path(coco_download.value.path()).read_text())
        assert document["images"][0]["width"] == 1072
        assert document["annotations"][0]["segmentation"] == candidates[2]["mask"]

        # a right-click adds a background point: one prompt of two points now
        page.mouse.click(
            box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.2, button="right"
        )
        two_points = re.compile(r'"labels":\[1,0\]')
        expect(page.locator("#overlay")).to_have_attribute("data-state", two_points)
        state, _ = overlay(page)
        assert state["prompt"]["labels"] == [1, 0]

        page.click("#everything")
        expect(page.locator("#status")).to_contain_text("objects in", timeout=SLOW_MS)
        state, alpha = overlay(page)
        page.screenshot(path=str(ARTIFACTS / "ui-everything.png"))
        assert page.text_content("#score") == f"{state['masks']} masks"
    assert requested
    assert all(url.startswith(gateway.url + "/") for url in requested), requested


def test_click_to_mask_decoded_in_the_browser(fixture: Fixture, tmp_path: Path) -> None:
    """With onnxruntime-web installed, the page decodes each click itself (WebAssembly)
    and shows both latencies; its masks agree with /segment's for the same prompt."""
    installed = REPO / "build" / "ui-assets"
    assert available(installed), "onnxruntime-web is not installed: run `make ui-assets`"
    assets = tmp_path / "ui-assets"  # its own models/ folder: the export runs in this test
    assets.mkdir()
    (assets / "node_modules").symlink_to(installed / "node_modules", target_is_directory=True)
    settings = {
        "ESAM_CHECKPOINT": str(fixture.checkpoint),
        "ESAM_API_KEYS": KEY,
        "ESAM_UI_ASSETS_DIR": str(assets),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {KEY}"}
    with GatewayProcess(settings) as gateway, demo_page(gateway) as (page, requested):
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(f"{gateway.url}/ui")
        page.wait_for_selector("#key-field:not([hidden])")
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.set_input_files("#file", str(fixture.image_path))
        decoder = page.locator("#browser-decoder")
        expect(decoder).to_have_attribute("data-state", "ready", timeout=SLOW_MS)
        # COOP/COEP make the page cross-origin isolated: onnxruntime-web may use threads
        assert page.evaluate("crossOriginIsolated") is True
        assert decoder.get_attribute("data-threads") == str(min(4, os.cpu_count() or 1))
        expect(page.locator("#status")).to_contain_text("click", timeout=SLOW_MS)

        box = page.locator("#marks").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
        expect(page.locator("#status")).to_contain_text("in the browser", timeout=SLOW_MS)
        state, alpha = overlay(page)
        assert state["source"] == "browser", (state, console)
        for path in ("browser", "server"):
            ms = state["latency"][path]
            assert ms > 0
            # the page shows Math.round(ms): half up, unlike Python's round
            assert page.text_content(f"#latency-{path}") == f"{math.floor(ms + 0.5)} ms"
        page.screenshot(path=str(ARTIFACTS / "ui-browser-decoder.png"))

        body = {"image_id": state["imageId"], "prompts": [state["prompt"]], "multimask": True}
        api = httpx.post(f"{gateway.url}/segment", json=body, headers=headers, timeout=120)
        candidates = api.json()["results"][0]["candidates"]
        server_masks = [mask_utils.decode(c["mask"]).astype(bool) for c in candidates]
        assert agreement(alpha, server_masks[0]) > 0.99
        # the browser's own RLE (from the COCO download) against the server's masks
        for n in range(3):
            page.click(f"#candidates button[data-candidate='{n}']")
            with page.expect_download() as coco_download:
                page.click("#download-coco")
            document = json.loads(Path(coco_download.value.path()).read_text())
            annotation = document["annotations"][0]
            rle = annotation["segmentation"]
            mask = mask_utils.decode({**rle, "counts": rle["counts"].encode()}).astype(bool)
            assert mask.shape == (603, 1072)
            # same candidate, same order; float rounding flips a few boundary pixels
            # (measured: 17-27 of 646,416, IoU 0.99990; bilinear instead of bicubic: 0.94)
            assert server_masks[n].any(), n  # two empty masks would agree trivially
            assert mask_iou(mask, server_masks[n]) > 0.999, n
            assert annotation["area"] == int(mask.sum())  # pycocotools as the oracle
            assert annotation["bbox"] == [
                float(v) for v in mask_utils.toBbox({**rle, "counts": rle["counts"].encode()})
            ]
            assert abs(annotation["score"] - candidates[n]["score"]) < 1e-3

        # a box: one candidate (single-mask output), decoded both ways
        page.click("#clear")
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.25)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.8, steps=5)
        page.mouse.up()
        expect(page.locator("#overlay")).to_have_attribute("data-state", re.compile(r'"box":\['))
        expect(page.locator("#status")).to_contain_text("in the browser", timeout=SLOW_MS)
        state, alpha = overlay(page)
        assert state["source"] == "browser"
        body = {"image_id": state["imageId"], "prompts": [state["prompt"]], "multimask": False}
        api = httpx.post(f"{gateway.url}/segment", json=body, headers=headers, timeout=120)
        box_mask = mask_utils.decode(api.json()["results"][0]["candidates"][0]["mask"])
        assert agreement(alpha, box_mask.astype(bool)) > 0.99

        # the server's mask on request: exactly /segment's
        page.check("#source-server")
        state, alpha = overlay(page)
        assert state["source"] == "server"
        assert agreement(alpha, box_mask.astype(bool)) > 0.99
    assert all(url.startswith(gateway.url + "/") for url in requested), requested
    assert any(url.endswith("/ui/ort/ort-wasm-simd-threaded.wasm") for url in requested)


def canvas_geometry(page: Page) -> dict[str, float]:
    """The image canvas's place on screen (CSS pixels) and its backing store's size."""
    box = page.locator("#image").bounding_box()
    assert box is not None
    backing = page.eval_on_selector("#image", "c => [c.width, c.height]")
    return {**box, "backing_width": backing[0], "backing_height": backing[1]}


def test_the_page_as_a_person_sees_it_on_a_hidpi_screen(fixture: Fixture, tmp_path: Path) -> None:
    """What is visible, not only what is in the DOM: the drop hint goes once an image is
    shown, the image fits the window (and fits again when the window shrinks) at the
    screen's pixel density, the status lines say what happened. Screenshots are kept in
    build/test-artifacts/ for a person to look at."""
    settings = {
        "ESAM_CHECKPOINT": str(fixture.checkpoint),
        "ESAM_UI_ASSETS_DIR": str(tmp_path / "no-assets"),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (
        GatewayProcess(settings) as gateway,
        demo_page(gateway, viewport=(1280, 900), device_scale_factor=2) as (page, _),
    ):
        page.goto(f"{gateway.url}/ui")
        hint = page.locator("#drop-hint")
        expect(hint).to_be_visible()
        expect(page.locator("#status")).to_have_text("No image yet.")
        page.set_input_files("#file", str(fixture.image_path))
        expect(page.locator("#status")).to_contain_text("click the image", timeout=SLOW_MS)
        expect(hint).to_be_hidden()  # hidden, and not shown through a CSS display rule
        assert page.eval_on_selector("#drop-hint", "e => getComputedStyle(e).display") == "none"

        geometry = canvas_geometry(page)
        assert geometry["x"] >= 0
        assert geometry["y"] >= 0
        assert geometry["x"] + geometry["width"] <= 1280
        assert geometry["y"] + geometry["height"] <= 900  # the whole image on screen
        # as wide as the stage allows and never enlarged, drawn with 2 device pixels per pixel
        room = page.eval_on_selector("#stage", "e => e.clientWidth - 4")
        assert abs(geometry["width"] - min(1072, room)) <= 1
        assert abs(geometry["width"] / geometry["height"] - 1072 / 603) < 0.01
        assert abs(geometry["backing_width"] - 2 * geometry["width"]) <= 2
        assert abs(geometry["backing_height"] - 2 * geometry["height"]) <= 2

        box = page.locator("#marks").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
        expect(page.locator("#status")).to_contain_text("Mask in", timeout=SLOW_MS)
        expect(page.locator("#score")).not_to_have_text("–")
        expect(page.locator("#paths")).to_be_hidden()  # no in-browser decoder offered here
        page.screenshot(path=str(ARTIFACTS / "ui-page-hidpi.png"))

        state, alpha = overlay(page)
        body = {"image_id": state["imageId"], "prompts": [state["prompt"]], "multimask": True}
        api = httpx.post(f"{gateway.url}/segment", json=body, timeout=120).json()
        best = mask_utils.decode(api["results"][0]["candidates"][0]["mask"]).astype(bool)
        assert agreement(alpha, best) > 0.99

        # a smaller window: the image shrinks to fit it, the mask and the point with it
        page.set_viewport_size({"width": 800, "height": 600})
        page.wait_for_timeout(300)
        smaller = canvas_geometry(page)
        assert smaller["width"] < geometry["width"]
        assert smaller["x"] + smaller["width"] <= 800
        assert smaller["y"] + smaller["height"] <= 600
        assert abs(smaller["width"] / smaller["height"] - 1072 / 603) < 0.02
        _, alpha = overlay(page)
        assert agreement(alpha, best) > 0.99
        page.screenshot(path=str(ARTIFACTS / "ui-page-small-window.png"))
