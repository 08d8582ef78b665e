"""The pages filegate serves to browsers: the web console at ``/console/`` (unless
``CONSOLE_ENABLED=false``), the API docs at ``/docs`` and ``/redoc``, and their assets under
``/assets/``, all from ``app.assets``: nothing from a CDN (docs/console.md).

The console is a client of the public API and nothing else; these routes serve only static bytes.
Every page carries a Content-Security-Policy without inline script or ``eval``; assets are served
with an ETag, gzip when the browser takes it, and, under their versioned URL, cached for a year.
"""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import RedirectResponse

from app.assets import CONSOLE_ONLY, Asset, render_page, served_assets
from app.errors import NotFound

YEAR = 365 * 24 * 3600
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""/docs and /redoc: no inline script either; Swagger UI and ReDoc set styles at run time."""


def console_csp(link_origin: str | None) -> str:
    """The console's policy. Previews come from this origin, from ``blob:`` (a file fetched with
    the key), and from the origin signed links point at (``PUBLIC_BASE_URL``), if another."""
    media = "'self' blob:" + (f" {link_origin}" if link_origin else "")
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {media} data:; media-src {media}; frame-src {media}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else None


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _page(request: Request, body: bytes, csp: str) -> Response:
    etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'  # the same on every worker and replica
    headers = {**_PAGE_HEADERS, "ETag": etag, "Content-Security-Policy": csp}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


def _asset(request: Request, asset: Asset) -> Response:
    gzipped = "gzip" in request.headers.get("accept-encoding", "").lower()
    etag = f'"{asset.version}{"-gz" if gzipped else ""}"'
    versioned = request.query_params.get("v") == asset.version
    headers = {
        "ETag": etag,
        "Vary": "Accept-Encoding",
        "Cache-Control": f"public, max-age={YEAR}, immutable" if versioned else "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return Response(asset.gzipped if gzipped else asset.body, media_type=asset.media_type,
                    headers=headers)  # fmt: skip


def install(app: FastAPI, *, console: bool, public_base_url: str | None) -> None:
    """Add the pages and their assets to ``app`` (the console's only if ``console``)."""
    assets = served_assets()
    if not console:
        assets = {name: asset for name, asset in assets.items() if name not in CONSOLE_ONLY}
    docs = render_page("docs.html", assets)
    redoc = render_page("redoc.html", assets)
    router = APIRouter(include_in_schema=False)

    @router.get("/assets/{name}")
    async def asset(name: str, request: Request) -> Response:
        found = assets.get(name)
        if found is None:
            raise NotFound(f"No asset {name!r}.")
        return _asset(request, found)

    @router.get("/docs")
    async def swagger(request: Request) -> Response:
        return _page(request, docs, _DOCS_CSP)

    @router.get("/redoc")
    async def redoc_page(request: Request) -> Response:
        return _page(request, redoc, _DOCS_CSP)

    if console:
        page = render_page("console.html", assets, prefix="../")
        csp = console_csp(_origin(public_base_url))

        @router.get("/")
        async def root() -> RedirectResponse:
            return RedirectResponse("console/", status_code=307)

        @router.get("/console")
        async def console_bare() -> RedirectResponse:
            return RedirectResponse("console/", status_code=307)

        @router.get("/console/")
        async def console_page(request: Request) -> Response:
            return _page(request, page, csp)

    app.include_router(router)
