"""Containers (``/v1/containers``) and container images (``/v1/container-images``): OCI
images run in microVMs of their own."""

from __future__ import annotations

import builtins
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nexus.client._base import AsyncPager, Resource, SyncPager, async_listing, sync_listing
from nexus.client._resources.guest import _ws_base

if TYPE_CHECKING:
    from nexus.client._http import AsyncHttp, SyncHttp


class ContainerImage(Resource):
    """An OCI image unpacked into a read-only file system; ``config`` holds its entrypoint,
    cmd, env, workdir, user and exposed ports. Registry passwords are never returned."""

    id: str
    name: str
    source: str
    reference: str | None = None
    digest: str
    rootfs_sha256: str
    size_bytes: int
    config: dict[str, Any]
    registry_username: str | None = None
    has_registry_password: bool = False
    created_by_user_id: str
    created_at: datetime


class Container(Resource):
    """A container: its microVM, what it runs (``spec``), state, exit code, restarts."""

    id: str
    name: str
    image_id: str
    vm_id: str | None = None
    spec: dict[str, Any]
    restart_policy: str
    max_restarts: int | None = None
    desired_state: str
    state: str
    exit_code: int | None = None
    restart_count: int = 0
    last_error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_restart_at: datetime | None = None
    created_by_user_id: str
    created_at: datetime


class ContainerExecResult(Resource):
    """What a command run inside a container printed, and its exit code."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool


class ContainerShellTicket(Resource):
    """A single-use ticket for a container's terminal WebSocket (``ws_path?ticket=``)."""

    ticket: str
    container_id: str
    expires_at: datetime
    ws_path: str


class LogLine(Resource):
    """One line a container wrote."""

    time: datetime
    stream: Literal["stdout", "stderr"]
    line: str


_IMAGES = "/v1/container-images"
_CTRS = "/v1/containers"


class ContainerImages:
    """``client.container_images``.

    Example:
        >>> op = client.container_images.pull("registry.example:5000/app:1.0", name="app")
        >>> img = client.container_images.import_archive("app.tar", name="app2")
        >>> [i.name for i in client.container_images.list()]
    """

    def __init__(self, http: SyncHttp, client: Any) -> None:
        self._http = http
        self._client = client

    def pull(
        self, reference: str, *, name: str | None = None, username: str | None = None,
        password: str | None = None, tls_verify: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        """Start pulling ``reference``; returns the operation (its result: ``image_id``)."""
        body: dict[str, Any] = {"reference": reference, "tls_verify": tls_verify}
        for k, v in (("name", name), ("username", username), ("password", password)):
            if v is not None:
                body[k] = v
        out: dict[str, Any] = self._http.request("POST", _IMAGES, json=body).json()
        return out

    def import_archive(self, path: str | Path, *, name: str) -> ContainerImage:
        """Upload an OCI layout tar or docker archive."""
        with open(path, "rb") as fh:
            resp = self._http.request(
                "POST", f"{_IMAGES}/import", params={"name": name}, content=fh,
                headers={"Content-Type": "application/x-tar"}, timeout=3600,
            )  # fmt: skip
        return ContainerImage.model_validate(resp.json())

    def get(self, ref: str) -> ContainerImage:
        """One image by id or name."""
        return ContainerImage.model_validate(self._http.request("GET", f"{_IMAGES}/{ref}").json())

    def list(self, *, limit: int | None = None) -> SyncPager[ContainerImage]:
        """Images you may see."""
        return sync_listing(self._http, _IMAGES, ContainerImage, limit=limit)

    def delete(self, ref: str) -> None:
        """Delete an image no container uses."""
        self._http.request("DELETE", f"{_IMAGES}/{ref}")


class Containers:
    """``client.containers``.

    Example:
        >>> c = client.containers.create("web", "app", ports=[{"container_port": 80}])
        >>> c = client.containers.wait_running(c.id)
        >>> print(client.containers.exec(c.id, ["cat", "/etc/os-release"]).stdout)
        >>> for line in client.containers.logs(c.id, tail=20): print(line.line)
        >>> client.containers.stop(c.id); client.containers.delete(c.id)
    """

    def __init__(self, http: SyncHttp, client: Any) -> None:
        self._http = http
        self._client = client

    def create(self, name: str, image: str, **fields: Any) -> Container:
        """Deploy ``image`` as container ``name``; ``fields``: command, args, env, workdir,
        user, ports, volumes (``[{"volume", "mount_path", "read_only"}]``), vcpus,
        memory_mib, restart_policy, network, base_image, ttl_s."""
        body = {"name": name, "image": image, **fields}
        return Container.model_validate(self._http.request("POST", _CTRS, json=body).json())

    def get(self, ref: str) -> Container:
        """One container by id or name."""
        return Container.model_validate(self._http.request("GET", f"{_CTRS}/{ref}").json())

    def list(self, *, state: str | None = None, limit: int | None = None) -> SyncPager[Container]:
        """Containers you may see."""
        return sync_listing(self._http, _CTRS, Container, {"state": state}, limit=limit)

    def update(self, ref: str, *, restart_policy: str) -> Container:
        """Change the restart policy."""
        resp = self._http.request(
            "PATCH", f"{_CTRS}/{ref}", json={"restart_policy": restart_policy}
        )
        return Container.model_validate(resp.json())

    def delete(self, ref: str) -> None:
        """Delete the container and its microVM."""
        self._http.request("DELETE", f"{_CTRS}/{ref}")

    def _act(self, ref: str, action: str, **params: Any) -> Container:
        resp = self._http.request("POST", f"{_CTRS}/{ref}/{action}", params=params or None,
                                  timeout=600)  # fmt: skip
        return Container.model_validate(resp.json())

    def start(self, ref: str) -> Container:
        """Start the entrypoint."""
        return self._act(ref, "start")

    def stop(self, ref: str, *, timeout: float = 10) -> Container:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        return self._act(ref, "stop", timeout=timeout)

    def restart(self, ref: str) -> Container:
        """Stop and start the entrypoint."""
        return self._act(ref, "restart")

    def exec(
        self, ref: str, command: builtins.list[str], *, env: dict[str, str] | None = None,
        user: str | None = None, workdir: str | None = None, timeout_s: float = 60,
    ) -> ContainerExecResult:  # fmt: skip
        """Run ``command`` inside the container."""
        body: dict[str, Any] = {"command": command, "env": env or {}, "timeout_s": timeout_s}
        if user is not None:
            body["user"] = user
        if workdir is not None:
            body["workdir"] = workdir
        resp = self._http.request("POST", f"{_CTRS}/{ref}/exec", json=body,
                                  timeout=timeout_s + 30)  # fmt: skip
        return ContainerExecResult.model_validate(resp.json())

    def logs(
        self, ref: str, *, tail: int | None = None, since: datetime | None = None
    ) -> builtins.list[LogLine]:
        """The container's log lines, oldest first."""
        params: dict[str, Any] = {"tail": tail, "since": since.isoformat() if since else None}
        resp = self._http.request("GET", f"{_CTRS}/{ref}/logs", params=params)
        return [LogLine.model_validate(x) for x in resp.json()["lines"]]

    def shell_ticket(self, ref: str) -> ContainerShellTicket:
        """A single-use ticket for the terminal WebSocket (for browsers)."""
        resp = self._http.request("POST", f"{_CTRS}/{ref}/shell/ticket")
        return ContainerShellTicket.model_validate(resp.json())

    def ws_target(self, ref: str) -> tuple[str, dict[str, str]]:
        """``(ws_url, headers)`` of the container's terminal WebSocket, authenticated with this
        client's bearer token (query: ``cols``, ``rows``, ``command``)."""
        token = self._http.creds.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return f"{_ws_base(self._http.url)}{_CTRS}/{ref}/shell/ws", headers

    def wait_running(self, ref: str, *, timeout: float = 300) -> Container:
        """Poll until the container runs (or failed/exited; then return it as it is)."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.get(ref)
            if c.state not in ("creating", "restarting") or time.monotonic() > deadline:
                return c
            time.sleep(0.5)


class AsyncContainers:
    """``AsyncClient.containers`` (reads and actions; see :class:`Containers`)."""

    def __init__(self, http: AsyncHttp, client: Any) -> None:
        self._http = http
        self._client = client

    async def get(self, ref: str) -> Container:
        """One container by id or name."""
        return Container.model_validate((await self._http.request("GET", f"{_CTRS}/{ref}")).json())

    def list(self, *, limit: int | None = None) -> AsyncPager[Container]:
        """Containers you may see (``async for``)."""
        return async_listing(self._http, _CTRS, Container, limit=limit)

    async def create(self, name: str, image: str, **fields: Any) -> Container:
        """Deploy ``image`` as container ``name``."""
        body = {"name": name, "image": image, **fields}
        return Container.model_validate((await self._http.request("POST", _CTRS, json=body)).json())

    async def stop(self, ref: str, *, timeout: float = 10) -> Container:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        resp = await self._http.request("POST", f"{_CTRS}/{ref}/stop",
                                        params={"timeout": timeout}, timeout=600)  # fmt: skip
        return Container.model_validate(resp.json())

    async def delete(self, ref: str) -> None:
        """Delete the container and its microVM."""
        await self._http.request("DELETE", f"{_CTRS}/{ref}")
