"""The web page: `/` serves gateway/static/index.html, `/static/*` its script and style sheet.

Plain HTML, CSS and JavaScript with no build step and nothing fetched from elsewhere, so the page
works offline. It talks to the same public API as any client; none of these routes is in the OpenAPI.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
