"""The OpenAPI document as clients need it, and the pages that show it.

FastAPI derives the document from the routes; :func:`install` then makes it truthful:

* **operationIds** are ``<resource>_<verb>`` (``vms_create``, ``vms_list``, ``images_get``):
  the route's tag, then its handler's name without the resource noun (:func:`operation_id`).
* **security**: an HTTP bearer scheme (``bearer``: a session access token or an ``nxs_`` API
  token; agents use their host token) on every operation whose dependencies authenticate
  the caller; the others (health, login, refresh, agent registration) say ``security: []``.
* **errors**: every error response is ``application/problem+json`` with the ``Problem``
  schema (RFC 9457 plus ``request_id`` and the extra members our errors carry), 422 included
  (FastAPI's ``HTTPValidationError`` is never sent, so it is not documented); 401/403 on
  authenticated operations, 404 where the path names a resource, 413 where a body is read,
  429 where a rate limit applies, 500 everywhere.
* ``/docs`` (Swagger UI) and ``/redoc`` are served with their assets from this server (the
  ``fastapi-offline`` package ships them), so they work offline and under our CSP (no inline
  script, no CDN).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from nexus.core.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE

SECURITY_SCHEME = "bearer"
DOCS_ASSETS = "/docs/assets"
# Dependencies (by function name) that authenticate the caller: a user's principal, or an
# agent's host token. Names, not imports: the modules that hold them may move.
AUTH_DEPENDENCIES = frozenset({"_principal", "_host_bearer", "_scrape_auth"})
RATE_LIMIT_DEPENDENCIES = frozenset({"limit_auth", "limit_create", "limit_expensive"})
# Words a handler name carries that its tag already says.
_NOUNS = {
    "port_forwards": ("port_forwards", "port_forward"),
    "auth": ("auth",),
    "guest": ("guest",),
    "health": ("health",),
    "audit": ("audit",),
}
# Where the rule above gives a poor name, the name clients see.
_OVERRIDES = {
    "clone_vm": "vms_clone",
    "create_snapshot": "snapshots_create",
    "list_vm_volumes": "volumes_list_attached",
    "attach_volume": "volumes_attach",
    "detach_volume": "volumes_detach",
    "list_tokens": "tokens_list",
    "create_token": "tokens_create",
    "delete_token": "tokens_delete",
    "me": "auth_me",
    "image_file": "hosts_image_file",
    "exec_command": "guest_exec",
    "create_ticket": "guest_shell_ticket",
    "latest_metrics": "guest_metrics",
    "metrics_history": "guest_metrics_history",
    "host_metrics": "hosts_metrics",
    "instantiate": "templates_instantiate",
}


class FieldError(BaseModel):
    """One invalid input: where (``body.name``, ``query.limit``), why, and the error type."""

    loc: str
    msg: str
    type: str | None = None


class ProblemDocument(BaseModel):
    """An error (RFC 9457 problem details), sent as ``application/problem+json``.

    ``type`` is stable (``https://nexus.dev/problems/<slug>``), ``detail`` says what went
    wrong in words, ``request_id`` matches the ``X-Request-ID`` response header and the
    server's logs. Some errors carry more members (listed below); clients should keep
    unknown ones."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(examples=[PROBLEM_BASE + "not-found"])
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="the request path")
    request_id: str | None = None
    errors: list[FieldError] | None = Field(
        None, description="validation errors (422), one per invalid input"
    )
    limit: float | None = Field(None, description="the limit that was exceeded")
    setting: str | None = Field(None, description="the setting that holds that limit")
    operation_id: str | None = Field(None, description="the operation that failed (409)")
    needed_mib: int | None = Field(None, description="disk the request needs (507)")
    available_mib: int | None = Field(None, description="disk there is (507)")


_STANDARD = {
    400: "Bad request",
    401: "Not authenticated: no, an invalid or an expired bearer token",
    403: "Authenticated, but not allowed (role, ownership or token scope)",
    404: "No such resource, or not one you may see",
    413: "Request body too large",
    422: "Invalid input: `errors` lists each invalid field",
    429: "Rate limited (see `Retry-After`)",
    500: "Internal error (the `request_id` finds it in the server's logs)",
}


def operation_id(route: APIRoute) -> str:
    """``<tag>_<verb>``: ``create_vm`` tagged ``vms`` -> ``vms_create``; ``list_images`` ->
    ``images_list``; an action route named ``vm_start`` -> ``vms_start``."""
    if route.name in _OVERRIDES:
        return _OVERRIDES[route.name]
    tag = str(route.tags[0] if route.tags else "api").replace("-", "_").lower()
    nouns = _NOUNS.get(tag, (tag, tag.removesuffix("s")))
    words = route.name.lower()
    for noun in nouns:
        words = re.sub(rf"(^|_){noun}(?=_|$)", "", words)
    words = words.strip("_") or route.name.lower()
    return f"{tag}_{words}"


def _calls(dependant: Any) -> set[str]:
    names: set[str] = set()
    stack = [dependant]
    while stack:
        dep = stack.pop()
        if dep.call is not None:
            names.add(getattr(dep.call, "__name__", ""))
        stack.extend(dep.dependencies)
    return names


def _routes(app: FastAPI) -> list[APIRoute]:
    out: list[APIRoute] = []
    stack: list[Any] = list(app.routes)
    while stack:
        r = stack.pop()
        if isinstance(r, APIRoute):
            out.append(r)
            continue
        # FastAPI >= 0.16x keeps an included router whole (``_IncludedRouter``)
        inner = getattr(r, "original_router", None) or getattr(r, "router", None)
        if inner is not None and inner is not r:
            stack.extend(getattr(inner, "routes", []))
    return out


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def refine(app: FastAPI, doc: dict[str, Any]) -> dict[str, Any]:
    """Security, problem+json errors and component clean-up (see the module docstring)."""
    facts: dict[tuple[str, str], set[str]] = {}
    for route in _routes(app):
        for method in route.methods or ():
            facts[(method.lower(), route.path_format)] = _calls(route.dependant)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    problem_schema = ProblemDocument.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem_schema.pop("$defs", {}))
    schemas["Problem"] = problem_schema
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "A session access token (POST /v1/auth/login) or an `nxs_` API "
            "token; agents present their host token.",
        }
    }
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            calls = facts.get((method, path), set())
            secured = bool(calls & AUTH_DEPENDENCIES)
            op["security"] = [{SECURITY_SCHEME: []}] if secured else []
            responses: dict[str, Any] = op["responses"]
            wanted = {500}
            if secured:
                wanted |= {401, 403}
            if "{" in path:
                wanted.add(404)
            if op.get("parameters") or op.get("requestBody") or "422" in responses:
                wanted.add(422)
            if op.get("requestBody"):
                wanted.add(413)
            if calls & RATE_LIMIT_DEPENDENCIES:
                wanted.add(429)
            for code in wanted:
                responses.setdefault(str(code), {"description": _STANDARD[code]})
            for status, resp in responses.items():
                if not status.isdigit() or int(status) < 400:
                    continue
                description = resp.get("description") or _STANDARD.get(int(status), "Error")
                if status == "422" and description == "Validation Error":
                    description = _STANDARD[422]
                responses[status] = _problem_response(description)
    for name in ("HTTPValidationError", "ValidationError"):
        others = {k: v for k, v in schemas.items() if k != name}
        if name not in _referenced(doc.get("paths", {})) | _referenced(others):
            schemas.pop(name, None)
    return doc


def _referenced(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            ref = n.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                found.add(ref.rsplit("/", 1)[1])
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return found


# --- /docs and /redoc ----------------------------------------------------------------------

_SWAGGER_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - Swagger UI</title>
<link rel="icon" href="{assets}/favicon.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""

_SWAGGER_INIT = """// Swagger UI start-up: a file, as the CSP runs no inline script.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  displayOperationId: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""

_REDOC_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - ReDoc</title>
<link rel="icon" href="{assets}/favicon.png">
</head>
<body>
<redoc spec-url="/openapi.json" disable-search="true"></redoc>
<script src="{assets}/redoc.standalone.js"></script>
</body>
</html>
"""

_ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def _assets_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def _install_docs(app: FastAPI) -> None:
    title = app.title
    assets = _assets_dir()

    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(_SWAGGER_HTML.format(title=title, assets=DOCS_ASSETS))

    async def redoc() -> HTMLResponse:
        return HTMLResponse(_REDOC_HTML.format(title=title, assets=DOCS_ASSETS))

    async def swagger_init() -> Response:
        return Response(_SWAGGER_INIT, media_type="text/javascript")

    async def asset(name: str) -> Response:
        media = _ASSET_TYPES.get(name)
        if media is None:
            from nexus.core.errors import NotFound

            raise NotFound(f"no docs asset {name!r}")
        return FileResponse(
            assets / name, media_type=media, headers={"Cache-Control": "public, max-age=86400"}
        )

    for path, endpoint in (
        ("/docs", swagger_ui),
        ("/redoc", redoc),
        (f"{DOCS_ASSETS}/swagger-init.js", swagger_init),
        (DOCS_ASSETS + "/{name}", asset),
    ):
        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)


def install(app: FastAPI) -> None:
    """Serve the refined document at ``/openapi.json`` and the docs pages. The app must be
    built with ``docs_url=None, redoc_url=None`` and ``generate_unique_id_function=
    operation_id``."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = refine(app, plain())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    _install_docs(app)
