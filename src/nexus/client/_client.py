"""``Client`` and ``AsyncClient``: the entry points of the SDK."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal

import httpx

from nexus import __version__
from nexus.client._base import Resource, _raise_if_failed
from nexus.client._errors import NexusError
from nexus.client._http import (
    AsyncHttp,
    HttpOptions,
    SyncHttp,
    TokenCallback,
    TokenPair,
    _Credentials,
    _pair_from,
    resolve_url,
)
from nexus.client._models import Operation
from nexus.client._resources.audit import AsyncAudit, Audit
from nexus.client._resources.containers import (
    AsyncContainers,
    ContainerImages,
    Containers,
)
from nexus.client._resources.events import AsyncEvents, Events
from nexus.client._resources.functions import AsyncFunctions, Functions
from nexus.client._resources.groups import AsyncGroups, Groups
from nexus.client._resources.hosts import AsyncHosts, Hosts
from nexus.client._resources.images import AsyncImages, Images
from nexus.client._resources.networks import AsyncNetworks, Networks
from nexus.client._resources.notifications import AsyncNotifications, Notifications
from nexus.client._resources.operations import AsyncOperations, Operations
from nexus.client._resources.portforwards import AsyncPortForwards, PortForwards
from nexus.client._resources.quotas import AsyncQuotas, Quotas
from nexus.client._resources.schedules import AsyncSchedules, Schedules
from nexus.client._resources.snapshots import AsyncSnapshots, AsyncTemplates, Snapshots, Templates
from nexus.client._resources.tokens import AsyncTokens, Tokens
from nexus.client._resources.users import AsyncUsers, User, Users
from nexus.client._resources.vms import AsyncVms, Vms
from nexus.client._resources.volumes import AsyncVolumes, Volumes
from nexus.client._resources.webhooks import AsyncWebhooks, Webhooks


class Me(Resource):
    """The caller: the user, the scopes in effect and how the request authenticated."""

    user: User
    scopes: list[str]
    token_id: str | None = None
    auth: Literal["session", "api_token"]


class Health(Resource):
    """``/health/ready``: ``status`` is ``ok`` or ``unavailable``; ``checks`` per dependency."""

    status: str
    checks: dict[str, Any] = {}

    @property
    def ok(self) -> bool:
        """True when the manager is ready to serve."""
        return self.status == "ok"


class VersionInfo(Resource):
    """Client and server versions (``server`` is None if the server did not say)."""

    client: str
    server: str | None = None
    api_title: str | None = None


def _options(
    url: str | None,
    timeout: float,
    retries: int,
    backoff: float,
    verify: bool | str,
    headers: Mapping[str, str] | None,
) -> HttpOptions:
    return HttpOptions(
        url=resolve_url(url),
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        verify=verify,
        headers=dict(headers or {}),
    )


def _creds(
    token: str | None, refresh_token: str | None, on_token_refresh: TokenCallback | None
) -> _Credentials:
    if token is None and refresh_token is None:
        token = os.environ.get("NEXUS_TOKEN") or None
    return _Credentials(token=token, refresh_token=refresh_token, on_refresh=on_token_refresh)


def _version(openapi: Any) -> VersionInfo:
    info = openapi.get("info", {}) if isinstance(openapi, dict) else {}
    return VersionInfo(client=__version__, server=info.get("version"), api_title=info.get("title"))


class Client:
    """A blocking client for the Nexus manager API.

    Args:
        url: the manager's base URL (default ``$NEXUS_URL``, else ``http://127.0.0.1:8080``).
        token: an API token (``nxs_...``) or a session access token (default ``$NEXUS_TOKEN``).
        refresh_token: with a session access token: used once to get a new pair when the
            access token is rejected (401); the request is then retried.
        on_token_refresh: called with the new :class:`TokenPair` after a login and after every
            refresh (the refresh token rotates; persist it if you keep sessions across
            processes).
        timeout: per-request timeout in seconds.
        retries: retries for idempotent requests on connection errors and 502/503/504.
        backoff: base of the exponential backoff between retries, in seconds.
        verify: TLS verification (bool or a CA bundle path).
        headers: extra headers for every request.

    Example:
        >>> from nexus.client import Client
        >>> with Client.login("http://127.0.0.1:8080", "admin", "adminpass123") as c:
        ...     print(c.me().user.username)
        ...     for user in c.users.list():
        ...         print(user.id, user.role)
        >>> ci = Client("https://nexus.example", token="nxs_...")
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        refresh_token: str | None = None,
        on_token_refresh: TokenCallback | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.3,
        verify: bool | str = True,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = SyncHttp(
            _options(url, timeout, retries, backoff, verify, headers),
            _creds(token, refresh_token, on_token_refresh),
            transport,
        )
        self.users = Users(self._http, self)
        self.vms = Vms(self._http, self)
        self.snapshots = Snapshots(self._http, self)
        self.templates = Templates(self._http, self)
        self.hosts = Hosts(self._http, self)
        self.images = Images(self._http, self)
        self.networks = Networks(self._http, self)
        self.volumes = Volumes(self._http, self)
        self.port_forwards = PortForwards(self._http, self)
        self.containers = Containers(self._http, self)
        """Containers, each in its own microVM: :class:`~nexus.client.Container`."""
        self.container_images = ContainerImages(self._http, self)
        """OCI images for containers: :class:`~nexus.client.ContainerImage`."""
        """Users (admin): :class:`~nexus.client.User`."""
        self.tokens = Tokens(self._http, self)
        """Your API tokens: :class:`~nexus.client.ApiToken`."""
        self.audit = Audit(self._http, self)
        """The audit log: :class:`~nexus.client.AuditEvent`."""
        self.operations = Operations(self._http, self)
        """Long-running tasks: :class:`~nexus.client.Operation`."""
        self.events = Events(self._http, self)
        """Every change you may see, paged or live: :class:`~nexus.client.Event`."""
        self.notifications = Notifications(self._http, self)
        """Your notifications: :class:`~nexus.client.Notification`."""
        self.webhooks = Webhooks(self._http, self)
        """Your webhooks: :class:`~nexus.client.Webhook`."""
        self.quotas = Quotas(self._http, self)
        """Quotas: limits and usage, :class:`~nexus.client.Quota`."""
        self.schedules = Schedules(self._http, self)
        """Cron-timed actions: :class:`~nexus.client.Schedule`."""
        self.functions = Functions(self._http, self)
        """Serverless handlers in microVMs: :class:`~nexus.client.Function`."""
        self.groups = Groups(self._http, self)
        """Instance groups: :class:`~nexus.client.Group`."""

    @classmethod
    def login(cls, url: str | None, username: str, password: str, **kwargs: Any) -> Client:
        """Log in with a password and return a client holding the session tokens.

        Expired access tokens are refreshed automatically; pass ``on_token_refresh`` to learn
        about new pairs.
        """
        client = cls(url, **kwargs)
        try:
            client.login_with_password(username, password)
        except BaseException:
            client.close()
            raise
        return client

    def login_with_password(self, username: str, password: str) -> TokenPair:
        """Log this client in (``POST /v1/auth/login``) and return the token pair."""
        resp = self._http.request(
            "POST", "/v1/auth/login", json={"username": username, "password": password}, auth=False
        )
        pair = _pair_from(resp.json())
        self._http._store_pair(pair)
        return pair

    @property
    def url(self) -> str:
        """The manager's base URL."""
        return self._http.url

    @property
    def token(self) -> str | None:
        """The bearer token in use (changes when the session is refreshed)."""
        return self._http.creds.token

    @token.setter
    def token(self, value: str | None) -> None:
        self._http.creds.token = value

    @property
    def refresh_token(self) -> str | None:
        """The current refresh token of a password session, if any."""
        return self._http.creds.refresh_token

    def refresh(self) -> TokenPair:
        """Exchange the refresh token for a new pair now (it also happens on a 401)."""
        if not self._http.creds.refresh_token:
            raise NexusError("this client has no refresh token (not a password session)")
        self._http._refresh(self._http.creds.token)
        creds = self._http.creds
        return TokenPair(creds.token or "", creds.refresh_token or "", 0)

    def me(self) -> Me:
        """Who am I: ``GET /v1/auth/me``."""
        return Me.model_validate(self._http.request("GET", "/v1/auth/me").json())

    def logout(self) -> None:
        """End the session server-side (its refresh token stops working) and forget tokens."""
        body = {"refresh_token": self.refresh_token} if self.refresh_token else None
        self._http.request("POST", "/v1/auth/logout", json=body)
        self._http.creds.token = None
        self._http.creds.refresh_token = None

    def health(self) -> Health:
        """Readiness of the manager (``/health/ready``; 503 is reported, not raised)."""
        try:
            data = self._http.request("GET", "/health/ready", auth=False).json()
        except NexusError as e:
            if e.status != 503 or not e.body:
                raise
            data = e.body
        return Health.model_validate(data)

    def backup(
        self,
        *,
        with_disks: bool = False,
        keep: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> Operation:
        """Back up the manager (admin only): ``POST /v1/admin/backup``. Returns the operation,
        finished when ``wait`` (raises :class:`~nexus.client.OperationFailed` if it failed);
        its ``result`` names the archive (``path``, ``size_bytes``, ``sha256``, ``pruned``)."""
        body: dict[str, Any] = {"with_disks": with_disks}
        if keep is not None:
            body["keep"] = keep
        resp = self._http.request("POST", "/v1/admin/backup", json=body)
        op = self.operations._model(resp.json())
        return _raise_if_failed(self.operations.wait(op.id, timeout=timeout)) if wait else op

    def version(self) -> VersionInfo:
        """The SDK's version and the server's (from its OpenAPI document)."""
        return _version(self._http.request("GET", "/openapi.json", auth=False).json())

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Escape hatch: call any endpoint with auth, retries and typed errors; returns JSON
        (or None for an empty body)."""
        resp = self._http.request(method, path, **kwargs)
        return resp.json() if resp.content else None

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"


class AsyncClient:
    """The asyncio twin of :class:`Client` (same arguments, awaitable methods).

    Example:
        >>> async with await AsyncClient.login(url, "admin", "adminpass123") as c:
        ...     me = await c.me()
        ...     async for ev in c.audit.list(limit=10):
        ...         print(ev.action)
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        refresh_token: str | None = None,
        on_token_refresh: TokenCallback | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.3,
        verify: bool | str = True,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = AsyncHttp(
            _options(url, timeout, retries, backoff, verify, headers),
            _creds(token, refresh_token, on_token_refresh),
            transport,
        )
        self.users = AsyncUsers(self._http, self)
        self.vms = AsyncVms(self._http, self)
        self.snapshots = AsyncSnapshots(self._http, self)
        self.templates = AsyncTemplates(self._http, self)
        self.hosts = AsyncHosts(self._http, self)
        self.images = AsyncImages(self._http, self)
        self.networks = AsyncNetworks(self._http, self)
        self.volumes = AsyncVolumes(self._http, self)
        self.port_forwards = AsyncPortForwards(self._http, self)
        self.containers = AsyncContainers(self._http, self)
        self.tokens = AsyncTokens(self._http, self)
        self.audit = AsyncAudit(self._http, self)
        self.operations = AsyncOperations(self._http, self)
        self.events = AsyncEvents(self._http, self)
        self.notifications = AsyncNotifications(self._http, self)
        self.webhooks = AsyncWebhooks(self._http, self)
        self.quotas = AsyncQuotas(self._http, self)
        self.schedules = AsyncSchedules(self._http, self)
        self.functions = AsyncFunctions(self._http, self)
        self.groups = AsyncGroups(self._http, self)

    @classmethod
    async def login(
        cls, url: str | None, username: str, password: str, **kwargs: Any
    ) -> AsyncClient:
        """Log in with a password; returns a client holding the session tokens."""
        client = cls(url, **kwargs)
        try:
            await client.login_with_password(username, password)
        except BaseException:
            await client.close()
            raise
        return client

    async def login_with_password(self, username: str, password: str) -> TokenPair:
        """Log this client in and return the token pair."""
        resp = await self._http.request(
            "POST", "/v1/auth/login", json={"username": username, "password": password}, auth=False
        )
        pair = _pair_from(resp.json())
        self._http._store_pair(pair)
        return pair

    @property
    def url(self) -> str:
        """The manager's base URL."""
        return self._http.url

    @property
    def token(self) -> str | None:
        """The bearer token in use."""
        return self._http.creds.token

    @token.setter
    def token(self, value: str | None) -> None:
        self._http.creds.token = value

    @property
    def refresh_token(self) -> str | None:
        """The current refresh token, if any."""
        return self._http.creds.refresh_token

    async def refresh(self) -> TokenPair:
        """Exchange the refresh token for a new pair now."""
        if not self._http.creds.refresh_token:
            raise NexusError("this client has no refresh token (not a password session)")
        await self._http._refresh(self._http.creds.token)
        creds = self._http.creds
        return TokenPair(creds.token or "", creds.refresh_token or "", 0)

    async def me(self) -> Me:
        """Who am I."""
        return Me.model_validate((await self._http.request("GET", "/v1/auth/me")).json())

    async def logout(self) -> None:
        """End the session server-side and forget the tokens."""
        body = {"refresh_token": self.refresh_token} if self.refresh_token else None
        await self._http.request("POST", "/v1/auth/logout", json=body)
        self._http.creds.token = None
        self._http.creds.refresh_token = None

    async def health(self) -> Health:
        """Readiness of the manager."""
        try:
            data = (await self._http.request("GET", "/health/ready", auth=False)).json()
        except NexusError as e:
            if e.status != 503 or not e.body:
                raise
            data = e.body
        return Health.model_validate(data)

    async def backup(
        self,
        *,
        with_disks: bool = False,
        keep: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> Operation:
        """Back up the manager (admin only); see :meth:`Client.backup`."""
        body: dict[str, Any] = {"with_disks": with_disks}
        if keep is not None:
            body["keep"] = keep
        resp = await self._http.request("POST", "/v1/admin/backup", json=body)
        op = self.operations._model(resp.json())
        if not wait:
            return op
        return _raise_if_failed(await self.operations.wait(op.id, timeout=timeout))

    async def version(self) -> VersionInfo:
        """The SDK's version and the server's."""
        resp = await self._http.request("GET", "/openapi.json", auth=False)
        return _version(resp.json())

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Escape hatch: call any endpoint; returns JSON or None."""
        resp = await self._http.request(method, path, **kwargs)
        return resp.json() if resp.content else None

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient(url={self.url!r})"
