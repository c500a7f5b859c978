"""/docs renders in a real browser (Debian chromium) with no request leaving the gateway."""

from __future__ import annotations

import pytest
from playwright.sync_api import Route, sync_playwright

from devtools.gateway_process import GatewayProcess
from tests.conftest import Fixture
from tests.support import chromium_path

# a browser, Redis Cluster/Sentinel, a fuzzer or a client generator: not in `make test-fast`
pytestmark = pytest.mark.slow

KEY = "docs-test-key-0123456789"


def test_docs_render_offline_behind_the_api_key(fixture: Fixture) -> None:
    requested: list[str] = []
    refused: list[str] = []
    settings = {"ESAM_CHECKPOINT": str(fixture.checkpoint), "ESAM_API_KEYS": KEY}
    with GatewayProcess(settings) as gateway, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            # no key: the page itself is refused
            page = browser.new_page()
            assert page.goto(f"{gateway.url}/docs").status == 401  # type: ignore[union-attr]

            context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {KEY}"})
            page = context.new_page()

            def only_the_gateway(route: Route) -> None:
                url = route.request.url
                requested.append(url)
                if url.startswith(gateway.url + "/"):
                    route.continue_()
                else:  # as on a machine without internet
                    refused.append(url)
                    route.abort()

            page.route("**/*", only_the_gateway)
            response = page.goto(f"{gateway.url}/docs")
            assert response is not None
            assert response.status == 200
            assert "default-src 'self'" in response.headers["content-security-policy"]
            page.wait_for_selector(".opblock-summary-path", timeout=60_000)
            paths = set(page.locator(".opblock-summary-path").all_inner_texts())
            title = page.locator(".info .title").inner_text()
        finally:
            browser.close()
    assert {"/embed", "/segment", "/segment/everything", "/embeddings/{image_id}"} <= {
        p.replace("\u200b", "") for p in paths
    }
    assert "EfficientSAM serving" in title
    assert refused == []
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in requested)
    assert any(u.endswith("/openapi.json") for u in requested)
