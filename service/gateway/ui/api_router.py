"""The demo page at ``/ui`` (``ESAM_UI``): plain HTML, JavaScript and CSS served by the
gateway, calling /embed, /segment and /segment/everything from the same origin.

The files hold no secret, so they are served without the API key (a browser cannot
send it for a page load); the page asks for the key when the gateway needs one and
sends it with each API call (kept in the tab's sessionStorage).

With onnxruntime-web installed (``make ui-assets``), the page also decodes clicks in the
browser: ``/ui/ort/*`` serves onnxruntime-web's WebAssembly build and
``/ui/models/decoder.onnx`` the serving model's decoder (weights: it needs the API key
when keys are on), and the page's CSP then allows compiling WebAssembly
(``'wasm-unsafe-eval'``, nothing else).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException

from service.gateway.state import ServingState, State
from service.gateway.ui.browser_decoder import DecoderExport, available, ort_file

router = APIRouter(prefix="/ui", include_in_schema=False)

STATIC: Final = Path(__file__).parent / "static"
FILES: Final = {
    "app.js": "text/javascript",
    "browser-decoder.js": "text/javascript",
    "style.css": "text/css",
}


def content_security_policy(wasm: bool) -> str:
    """The page loads nothing from anywhere else; masks are drawn from blob-free canvases.
    With the in-browser decoder, WebAssembly may be compiled (and nothing else evaluated)."""
    scripts = "'self' 'wasm-unsafe-eval'" if wasm else "'self'"
    return (
        f"default-src 'self'; script-src {scripts}; style-src 'self'; "
        "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'"
    )


def headers(state: ServingState) -> dict[str, str]:
    wasm = available(state.settings.ui_assets_dir)
    isolation = {
        # cross-origin isolated: onnxruntime-web may run its WebAssembly on several threads
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Embedder-Policy": "require-corp",
    }
    return {
        "Content-Security-Policy": content_security_policy(wasm),
        "Cache-Control": "no-cache",
        **(isolation if wasm else {}),
    }


@router.get("")
async def page(state: State) -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=headers(state))


@router.get("/config.json")
async def config(state: State) -> JSONResponse:
    return JSONResponse(
        {
            "api_key_required": state.settings.auth_enabled,
            "model": state.model_id,
            "browser_decoder": available(state.settings.ui_assets_dir),
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/ort/{name}")
async def onnxruntime_file(name: str, state: State) -> FileResponse:
    found = ort_file(state.settings.ui_assets_dir, name)
    if found is None:
        raise HTTPException(404, f"no such file: /ui/ort/{name} (make ui-assets installs them)")
    path, media_type = found
    return FileResponse(path, media_type=media_type, headers=headers(state))


@router.get("/models/decoder.onnx")
async def decoder_model(request: Request, state: State) -> FileResponse:
    """The serving model's prompt encoder + mask decoder as ONNX (exported on first use)."""
    if not available(state.settings.ui_assets_dir):
        raise HTTPException(404, "the in-browser decoder is not installed (make ui-assets)")
    export: DecoderExport | None = getattr(request.app.state, "ui_decoder_export", None)
    if export is None:
        export = DecoderExport(state.loaded, state.settings.ui_assets_dir)
        request.app.state.ui_decoder_export = export
    path = await export.ready()
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={"Cache-Control": "no-cache", "X-Model": state.model_id},
    )


@router.get("/{name}")
async def asset(name: str, state: State) -> FileResponse:
    media_type = FILES.get(name)
    if media_type is None:
        raise HTTPException(404, f"no such file: /ui/{name}")
    return FileResponse(STATIC / name, media_type=media_type, headers=headers(state))
