"""The demo page at ``/ui`` (``ESAM_UI``): plain HTML, JavaScript and CSS served by the
gateway, calling /embed, /segment and /segment/everything from the same origin.

The files hold no secret, so they are served without the API key (a browser cannot
send it for a page load); the page asks for the key when the gateway needs one and
sends it with each API call (kept in the tab's sessionStorage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException

from service.gateway.state import State

router = APIRouter(prefix="/ui", include_in_schema=False)

STATIC: Final = Path(__file__).parent / "static"
FILES: Final = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}
#: the page loads nothing from anywhere else; masks are drawn from blob-free canvases
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'"
)
HEADERS: Final = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}


@router.get("")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/config.json")
async def config(state: State) -> JSONResponse:
    return JSONResponse(
        {"api_key_required": bool(state.settings.api_keys), "model": state.model_id},
        headers={"Cache-Control": "no-store"},
    )


@router.get("/{name}")
async def asset(name: str) -> FileResponse:
    media_type = FILES.get(name)
    if media_type is None:
        raise HTTPException(404, f"no such file: /ui/{name}")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
