"""The demo page's click-to-mask latency: decoded in the browser against decoded by the gateway.

A real gateway (embedded encoder, fixture checkpoint) and the real page in headless
Debian chromium (Playwright). The page decodes every click twice, one path after the
other: in the browser (onnxruntime-web, WebAssembly, one thread; the best candidate's
full-size mask included) and through ``POST /segment`` (HTTP on loopback, the
gateway's PyTorch decoder, RLE decoded by the page). Reported: the decoder's first
export (``/ui/models/decoder.onnx``) and the page's load of it, then the median and
90th percentile of both latencies over N single clicks spread over the image, and
their ratio. Needs ``make ui-assets``.

    python bench/ui_decoder.py              # 30 clicks
    python bench/ui_decoder.py --clicks 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

from devtools.gateway_process import GatewayProcess
from service.gateway.ui.browser_decoder import available

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"
IMAGE = FIXTURE / "efficientsam-ti-seed0" / "dogs.jpg"
SLOW_MS = 300_000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--image", type=Path, default=IMAGE)
    args = parser.parse_args()
    installed = REPO / "build" / "ui-assets"
    if not available(installed):
        raise SystemExit("onnxruntime-web is not installed: run `make ui-assets`")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: run `make chromium`")
    with tempfile.TemporaryDirectory() as workdir:
        assets = Path(workdir) / "ui-assets"  # a fresh models/ folder: the export is timed
        assets.mkdir()
        (assets / "node_modules").symlink_to(installed / "node_modules")
        settings = {"ESAM_CHECKPOINT": str(args.checkpoint), "ESAM_UI_ASSETS_DIR": str(assets)}
        with GatewayProcess(settings) as gateway, sync_playwright() as playwright:
            started = time.perf_counter()
            httpx.get(f"{gateway.url}/ui/models/decoder.onnx", timeout=600).raise_for_status()
            export_s = time.perf_counter() - started
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            started = time.perf_counter()
            page.goto(f"{gateway.url}/ui")
            expect(page.locator("#browser-decoder")).to_have_attribute(
                "data-state", "ready", timeout=SLOW_MS
            )
            load_s = time.perf_counter() - started
            page.set_input_files("#file", str(args.image))
            expect(page.locator("#status")).to_contain_text("click", timeout=SLOW_MS)
            box = page.locator("#marks").bounding_box()
            assert box is not None
            browser_ms: list[float] = []
            server_ms: list[float] = []
            for n in range(args.clicks + 1):  # the first click warms both paths up
                if n:
                    page.click("#clear")
                x = box["x"] + box["width"] * (0.1 + 0.8 * ((n * 7) % 11) / 10)
                y = box["y"] + box["height"] * (0.1 + 0.8 * ((n * 3) % 7) / 6)
                page.mouse.click(x, y)
                expect(page.locator("#status")).to_contain_text("in the browser", timeout=SLOW_MS)
                state = json.loads(page.eval_on_selector("#overlay", "c => c.dataset.state"))
                if n:
                    browser_ms.append(state["latency"]["browser"])
                    server_ms.append(state["latency"]["server"])
            browser.close()
    cores = os.cpu_count() or 1
    print(
        f"# measured on {platform.machine()}, {cores} cores, headless chromium, "
        f"{args.checkpoint.name}, {args.image.name}; gateway and browser on the same machine"
    )
    print(f"decoder export (first GET /ui/models/decoder.onnx): {export_s:.1f} s")
    print(f"page load to in-browser decoder ready: {load_s:.1f} s")
    for name, values in (("browser (WebAssembly)", browser_ms), ("server (/segment)", server_ms)):
        print(
            f"{name:>22}: median {statistics.median(values):.0f} ms, "
            f"p90 {percentile(values, 0.9):.0f} ms over {len(values)} clicks"
        )
    ratio = statistics.median(browser_ms) / statistics.median(server_ms)
    print(f"browser / server (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
