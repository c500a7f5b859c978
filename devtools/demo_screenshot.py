"""The README's picture of the demo page: a real gateway, Debian's chromium, one click.

    python -m devtools.demo_screenshot PHOTO --out docs/images/demo-page.jpg \\
        [--checkpoint PATH] [--click 0.5,0.45]

Starts ``python -m service`` (``--checkpoint``, default ``random``: the page then says
RANDOM-WEIGHTS and masks are noise), opens ``/ui`` at 1280×900 on a 2× screen in
headless chromium, uploads ``PHOTO``, clicks at the given fraction of the image, waits
for the mask (and for the in-browser decoder, when ``make ui-assets`` installed it) and
saves the screenshot. Dev-only (Playwright), never imported by the service.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from devtools.gateway_process import GatewayProcess

WAIT_MS = 300_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photo", type=Path, help="the image to open in the page")
    parser.add_argument("--out", type=Path, default=Path("docs/images/demo-page.jpg"))
    parser.add_argument("--checkpoint", default="random", help="ESAM_CHECKPOINT (default: random)")
    parser.add_argument("--click", default="0.5,0.45", help="x,y as fractions of the image")
    args = parser.parse_args(argv)
    fx, fy = (float(v) for v in args.click.split(","))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        parser.error("chromium is not installed (Debian package `chromium`)")
    with GatewayProcess({"ESAM_CHECKPOINT": args.checkpoint}) as gateway, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=2)
            page.goto(f"{gateway.url}/ui")
            page.set_input_files("#file", str(args.photo))
            expect(page.locator("#status")).to_contain_text("click the image", timeout=WAIT_MS)
            in_browser = page.locator("#paths").is_visible()
            if in_browser:  # both paths decode the click
                expect(page.locator("#browser-decoder")).to_contain_text("ready", timeout=WAIT_MS)
            box = page.locator("#marks").bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
            expect(page.locator("#status")).to_contain_text("Mask in", timeout=WAIT_MS)
            if in_browser:
                expect(page.locator("#latency-browser")).not_to_have_text("–", timeout=WAIT_MS)
            page.wait_for_timeout(500)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            if args.out.suffix.lower() in (".jpg", ".jpeg"):  # CSS pixels, for a README
                page.screenshot(path=str(args.out), type="jpeg", quality=85, scale="css")
            else:
                page.screenshot(path=str(args.out))
        finally:
            browser.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
