"""Functions (``/v1/functions``): serverless handlers in microVMs."""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path
from typing import Any

from nexus.client._base import (
    AsyncCollection,
    AsyncPager,
    Resource,
    SyncCollection,
    SyncPager,
    async_listing,
    sync_listing,
)

BUILD_TIMEOUT_S = 900.0


class FunctionVersion(Resource):
    """One immutable version: ``state`` building, ready or failed (``state_reason``);
    ``boot_ready_ms`` is its cold boot up to "handler imported"."""

    id: str
    function_id: str
    version: int
    runtime: str
    handler: str
    code_kind: str
    code_sha256: str
    env: dict[str, str] = {}
    memory_mib: int
    timeout_s: int
    state: str
    state_reason: str | None = None
    snapshot_id: str | None = None
    operation_id: str | None = None
    boot_ready_ms: int | None = None
    build_ms: int | None = None
    created_at: datetime


class Function(Resource):
    """A function with its newest ``version`` and ``aliases`` (alias -> version)."""

    id: str
    name: str
    description: str = ""
    concurrency: int
    min_warm: int
    max_instances: int
    max_queue: int
    idle_s: int
    latest_version: int
    aliases: dict[str, int] = {}
    version: FunctionVersion | None = None
    warm: int = 0
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class Invocation(Resource):
    """One invocation: ``status`` queued, running, succeeded, error (``error`` has the
    handler's exception and traceback), timed_out or failed."""

    id: str
    function_id: str
    version: int | None = None
    mode: str
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    cold_start: bool = False
    start_ms: int | None = None
    duration_ms: int | None = None
    logs_tail: str = ""
    created_at: datetime
    finished_at: datetime | None = None


def code_body(
    source: str | None = None, zip_path: str | Path | None = None
) -> dict[str, Any] | None:
    """The ``code`` object of a request: inline source, or a zip file's bytes (base64)."""
    if zip_path is not None:
        return {"zip_base64": base64.b64encode(Path(zip_path).read_bytes()).decode()}
    if source is not None:
        return {"source": source}
    return None


def _invoke_params(version: int | None, alias: str | None, asynchronous: bool) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if version is not None:
        params["version"] = version
    if alias:
        params["alias"] = alias
    if asynchronous:
        params["async"] = "true"
    return params


class Functions(SyncCollection[Function]):
    """``client.functions``: functions you may see.

    Example:
        >>> fn = client.functions.create("double", "def handler(e, c):\\n    return e['x'] * 2\\n")
        >>> client.functions.invoke(fn.id, {"x": 21}).result
        42
        >>> client.functions.update(fn.id, source=new_code)  # a new version
        >>> [i.status for i in client.functions.invocations(fn.id)]
    """

    path = "/v1/functions"
    model = Function

    def create(
        self,
        name: str,
        source: str | None = None,
        *,
        zip_path: str | Path | None = None,
        handler: str | None = None,
        wait: bool = True,
        timeout: float = BUILD_TIMEOUT_S,
        **settings: Any,
    ) -> Function:
        """Create a function from inline ``source`` (module of ``handler``, default
        ``main.handler``) or a zip; ``settings``: env, memory_mib, timeout_s, concurrency,
        min_warm, max_instances, max_queue, idle_s. Waits until version 1 is built."""
        body = {"name": name, "code": code_body(source, zip_path), "handler": handler, **settings}
        body = {k: v for k, v in body.items() if v is not None}
        resp = self._http.request(
            "POST", self.path, json=body, params={"wait": str(wait).lower()}, timeout=timeout
        )
        return Function.model_validate(resp.json())

    def update(
        self,
        id: str,
        source: str | None = None,
        *,
        zip_path: str | Path | None = None,
        wait: bool = True,
        timeout: float = BUILD_TIMEOUT_S,
        **fields: Any,
    ) -> Function:
        """Change a function; new code or runtime settings build a new version."""
        body = {"code": code_body(source, zip_path), **fields}
        body = {k: v for k, v in body.items() if v is not None}
        resp = self._http.request(
            "PATCH",
            self._item_path(id),
            json=body,
            params={"wait": str(wait).lower()},
            timeout=timeout,
        )
        return Function.model_validate(resp.json())

    def invoke(
        self,
        id: str,
        event: Any = None,
        *,
        version: int | None = None,
        alias: str | None = None,
        asynchronous: bool = False,
        timeout: float = 960.0,
    ) -> Invocation:
        """Invoke with ``event``; ``asynchronous`` returns the queued invocation at once."""
        resp = self._http.request(
            "POST",
            f"{self._item_path(id)}/invoke",
            json={"event": event},
            params=_invoke_params(version, alias, asynchronous),
            timeout=timeout,
        )
        return Invocation.model_validate(resp.json())

    def invocation(self, id: str, invocation_id: str) -> Invocation:
        """One invocation (poll an async one until its status is final)."""
        resp = self._http.request("GET", f"{self._item_path(id)}/invocations/{invocation_id}")
        return Invocation.model_validate(resp.json())

    def invocations(
        self, id: str, *, status: str | None = None, limit: int | None = None
    ) -> SyncPager[Invocation]:
        """The function's invocations, newest first."""
        params = {"status": status} if status else None
        return sync_listing(
            self._http, f"{self._item_path(id)}/invocations", Invocation, params, limit=limit
        )

    def logs(self, id: str, invocation_id: str) -> str:
        """An invocation's captured output (at most 64 KiB)."""
        path = f"{self._item_path(id)}/invocations/{invocation_id}/logs"
        return str(self._http.request("GET", path).json()["logs"])

    def versions(self, id: str, *, limit: int | None = None) -> SyncPager[FunctionVersion]:
        """The function's versions, newest first."""
        return sync_listing(
            self._http, f"{self._item_path(id)}/versions", FunctionVersion, limit=limit
        )

    def set_alias(self, id: str, alias: str, version: int) -> Function:
        """Point ``alias`` at a ready version."""
        resp = self._http.request(
            "PUT", f"{self._item_path(id)}/aliases/{alias}", json={"version": version}
        )
        return Function.model_validate(resp.json())

    def delete_alias(self, id: str, alias: str) -> Function:
        """Remove a named alias (``latest`` stays)."""
        resp = self._http.request("DELETE", f"{self._item_path(id)}/aliases/{alias}")
        return Function.model_validate(resp.json())


class AsyncFunctions(AsyncCollection[Function]):
    """``AsyncClient.functions`` (see :class:`Functions`)."""

    path = "/v1/functions"
    model = Function

    async def create(
        self,
        name: str,
        source: str | None = None,
        *,
        zip_path: str | Path | None = None,
        handler: str | None = None,
        wait: bool = True,
        timeout: float = BUILD_TIMEOUT_S,
        **settings: Any,
    ) -> Function:
        """Create a function; see :meth:`Functions.create`."""
        body = {"name": name, "code": code_body(source, zip_path), "handler": handler, **settings}
        body = {k: v for k, v in body.items() if v is not None}
        resp = await self._http.request(
            "POST", self.path, json=body, params={"wait": str(wait).lower()}, timeout=timeout
        )
        return Function.model_validate(resp.json())

    async def invoke(
        self,
        id: str,
        event: Any = None,
        *,
        version: int | None = None,
        alias: str | None = None,
        asynchronous: bool = False,
        timeout: float = 960.0,
    ) -> Invocation:
        """Invoke with ``event``; see :meth:`Functions.invoke`."""
        resp = await self._http.request(
            "POST",
            f"{self._item_path(id)}/invoke",
            json={"event": event},
            params=_invoke_params(version, alias, asynchronous),
            timeout=timeout,
        )
        return Invocation.model_validate(resp.json())

    def invocations(
        self, id: str, *, status: str | None = None, limit: int | None = None
    ) -> AsyncPager[Invocation]:
        """The function's invocations, newest first."""
        params = {"status": status} if status else None
        return async_listing(
            self._http, f"{self._item_path(id)}/invocations", Invocation, params, limit=limit
        )

    async def update(
        self,
        id: str,
        source: str | None = None,
        *,
        zip_path: str | Path | None = None,
        wait: bool = True,
        timeout: float = BUILD_TIMEOUT_S,
        **fields: Any,
    ) -> Function:
        """Change a function; see :meth:`Functions.update`."""
        body = {"code": code_body(source, zip_path), **fields}
        body = {k: v for k, v in body.items() if v is not None}
        resp = await self._http.request(
            "PATCH",
            self._item_path(id),
            json=body,
            params={"wait": str(wait).lower()},
            timeout=timeout,
        )
        return Function.model_validate(resp.json())

    async def invocation(self, id: str, invocation_id: str) -> Invocation:
        """One invocation."""
        path = f"{self._item_path(id)}/invocations/{invocation_id}"
        return Invocation.model_validate((await self._http.request("GET", path)).json())

    async def logs(self, id: str, invocation_id: str) -> str:
        """An invocation's captured output."""
        path = f"{self._item_path(id)}/invocations/{invocation_id}/logs"
        return str((await self._http.request("GET", path)).json()["logs"])

    def versions(self, id: str, *, limit: int | None = None) -> AsyncPager[FunctionVersion]:
        """The function's versions, newest first."""
        return async_listing(
            self._http, f"{self._item_path(id)}/versions", FunctionVersion, limit=limit
        )

    async def set_alias(self, id: str, alias: str, version: int) -> Function:
        """Point ``alias`` at a ready version."""
        resp = await self._http.request(
            "PUT", f"{self._item_path(id)}/aliases/{alias}", json={"version": version}
        )
        return Function.model_validate(resp.json())

    async def delete_alias(self, id: str, alias: str) -> Function:
        """Remove a named alias."""
        resp = await self._http.request("DELETE", f"{self._item_path(id)}/aliases/{alias}")
        return Function.model_validate(resp.json())
