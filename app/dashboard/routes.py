"""The dashboard (GET /) and the API docs (/docs): pages and assets served from the package
(app/dashboard/static), never from a CDN, so they work on a box with no internet. Loading them needs no key: the
dashboard asks for one and sends it in the Authorization header of its API calls."""

import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).resolve().parent / "static"

# Pages and the dashboard's own scripts are revalidated at every load (an upgrade shows at once, a 304
# otherwise); vendored files live in folders named by their version (scripts/vendor_assets.sh), so a
# browser may keep them for good.
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"


class Assets(StaticFiles):
    """StaticFiles with the cache policy above."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        vendored = path.startswith("vendor" + os.sep)
        response.headers["cache-control"] = IMMUTABLE if vendored else REVALIDATE
        return response


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html", headers={"cache-control": REVALIDATE})


router = APIRouter(include_in_schema=False)
router.mount("/static", Assets(directory=STATIC), name="static")


@router.api_route("/", methods=["GET", "HEAD"])
async def dashboard() -> FileResponse:
    """The dashboard: jobs, live charts, the new-job form, predictions, datasets."""
    return _page("index.html")


# Included only when settings.docs is on (TAAS_DOCS), with /openapi.json.
docs_router = APIRouter(include_in_schema=False)


@docs_router.api_route("/docs", methods=["GET", "HEAD"])
async def swagger_ui() -> FileResponse:
    """Swagger UI on /openapi.json."""
    return _page("docs.html")


# ReDoc loads its logo from a CDN and runs its search in a blob: Worker, both refused by the pages'
# Content-Security-Policy; links to /redoc land on Swagger UI, which documents the same OpenAPI document.
@docs_router.get("/redoc")
async def redoc() -> RedirectResponse:
    """To /docs."""
    return RedirectResponse("/docs", status_code=308)
