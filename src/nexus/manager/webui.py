"""The web console (``ui/``, built into ``ui/dist``) served at ``/``.

A pure-ASGI layer in front of the router that answers only ``GET``/``HEAD`` requests for paths
that are not the API's, so the API's routing, its 404s and 405s (problem+json) stay untouched:

* ``/assets/<file>``: Vite's content-hashed bundles, ``Cache-Control: public,
  max-age=31536000, immutable`` (a new build has new names); a missing asset is a 404.
* any other file at the top of the build (``favicon.svg``): served, ``no-cache``;
* ``/``, and any other path a browser navigates to (``Accept: text/html``; ``/vms/vm_123``):
  ``index.html``, ``no-cache``, so the single-page app's router shows the page (SPA fallback)
  and a new build is picked up at once. Other clients (curl, SDKs: no ``text/html``) asking
  for an unknown path get the API's 404 problem as before.

Without a build, ``/`` answers 503 with a page that says how to make one. Nothing comes from a
CDN: the bundle holds every script, style and font, so it runs under the manager's CSP.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

# Paths the API (and its documentation pages) own: never answered from the console.
API_PREFIXES = ("/v1/", "/health/", "/docs/")
API_PATHS = frozenset({"/v1", "/health", "/metrics", "/docs", "/redoc", "/openapi.json"})
IMMUTABLE = "public, max-age=31536000, immutable"
NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Nexus: web console not built</title></head>
<body><h1>The Nexus web console is not built</h1>
<p>This manager looks for it in <code>{dir}</code>. Build it from the source tree with
<code>scripts/install-deps.sh</code> (or <code>make up</code>), or by hand:
<code>cd ui &amp;&amp; npm ci &amp;&amp; npm run build</code>; or point the
<code>ui_dir</code> setting (<code>NEXUS_UI_DIR</code>) at a build.</p>
<p>The API is served as usual: <a href="/docs">/docs</a>.</p></body></html>
"""


def is_api_path(path: str) -> bool:
    """Whether ``path`` belongs to the API (never answered with the console)."""
    return path in API_PATHS or path.startswith(API_PREFIXES)


class WebUiMiddleware:
    """Serves the built console from ``ui_dir`` for non-API ``GET``/``HEAD`` requests."""

    def __init__(self, app: ASGIApp, *, ui_dir: Path) -> None:
        self.app = app
        self.root = ui_dir.resolve()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope.get("method") not in ("GET", "HEAD")
            or is_api_path(path)
        ):
            await self.app(scope, receive, send)
            return
        accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
        response = self.response(path, wants_html="text/html" in accept)
        if response is None:  # not the console's: the router answers (a 404 problem)
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def response(self, path: str, *, wants_html: bool) -> Response | None:
        """The answer for ``path``: an asset, a top-level file, index.html, or None."""
        if path.startswith("/assets/"):
            asset = self._inside(path)
            if asset is None:
                return PlainTextResponse("no such asset", status_code=404)
            return FileResponse(asset, headers={"Cache-Control": IMMUTABLE})
        top = self._inside(path) if path.count("/") == 1 and path != "/" else None
        if top is not None:
            return FileResponse(top, headers={"Cache-Control": "no-cache"})
        if path != "/" and not wants_html:
            return None
        index = self.root / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT.format(dir=self.root), status_code=503)
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    def _inside(self, path: str) -> Path | None:
        """The regular file ``path`` names inside the build, or None (no escaping it)."""
        try:
            target = (self.root / path.lstrip("/")).resolve()
        except (OSError, ValueError):
            return None
        if not target.is_relative_to(self.root) or not target.is_file():
            return None
        return target
