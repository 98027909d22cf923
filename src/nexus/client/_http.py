"""The HTTP core shared by every collection: auth header, token refresh, retries, errors.

:class:`SyncHttp` and :class:`AsyncHttp` have the same shape; collections only call
``request``. Policy:

* a 401 on a request made with a session access token triggers one refresh (``POST
  /v1/auth/refresh`` with the rotating refresh token) and one retry; the new pair is reported to
  ``on_token_refresh`` so callers (the CLI) can persist it;
* connection errors and 502/503/504 are retried with exponential backoff, but only for
  idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) — a POST is never sent twice;
* any status >= 400 raises a typed :class:`~nexus.client.NexusError`; transport failures raise
  :class:`~nexus.client.NexusConnectionError`.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from nexus import __version__
from nexus.client._errors import NexusConnectionError, Unauthorized, error_from_response

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
NO_REFRESH_PATHS = ("/v1/auth/login", "/v1/auth/refresh")
USER_AGENT = f"nexus-python/{__version__}"
DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass
class TokenPair:
    """Tokens handed to ``on_token_refresh`` after a login or refresh."""

    access_token: str
    refresh_token: str
    expires_in: int


TokenCallback = Callable[[TokenPair], None]


@dataclass
class _Credentials:
    """The bearer token in use and, for sessions, the refresh token."""

    token: str | None
    refresh_token: str | None
    on_refresh: TokenCallback | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class HttpOptions:
    """Connection settings shared by the sync and async clients."""

    url: str
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.3
    verify: bool | str = True
    headers: Mapping[str, str] = field(default_factory=dict)

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.url.rstrip("/"),
            "timeout": self.timeout,
            "verify": self.verify,
            "headers": {"User-Agent": USER_AGENT, "Accept": "application/json", **self.headers},
        }

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds to sleep before retry ``attempt`` (1-based): Retry-After or jittered backoff."""
        if response is not None:
            ra = response.headers.get("retry-after", "")
            if ra.replace(".", "", 1).isdigit():
                return min(float(ra), 30.0)
        base: float = self.backoff * (2 ** (attempt - 1))
        return float(min(base, 10.0) * (0.5 + random.random() / 2))


def resolve_url(url: str | None) -> str:
    """``url`` or ``$NEXUS_URL`` or the local default."""
    return (url or os.environ.get("NEXUS_URL") or DEFAULT_URL).rstrip("/")


def _connection_error(exc: httpx.TransportError, url: str) -> NexusConnectionError:
    reason = str(exc) or type(exc).__name__
    return NexusConnectionError(f"cannot reach the Nexus manager at {url}: {reason}")


def _pair_from(data: Any) -> TokenPair:
    return TokenPair(
        access_token=str(data["access_token"]),
        refresh_token=str(data["refresh_token"]),
        expires_in=int(data.get("expires_in", 0)),
    )


class _Base:
    def __init__(self, options: HttpOptions, creds: _Credentials) -> None:
        self.options = options
        self.creds = creds

    @property
    def url(self) -> str:
        return self.options.url

    def _headers(self, token: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _may_refresh(self, path: str, token: str | None) -> bool:
        return bool(
            self.creds.refresh_token
            and token
            and not token.startswith("nxs_")
            and not path.startswith(NO_REFRESH_PATHS)
        )

    def _store_pair(self, pair: TokenPair) -> None:
        self.creds.token = pair.access_token
        self.creds.refresh_token = pair.refresh_token
        if self.creds.on_refresh is not None:
            self.creds.on_refresh(pair)

    def _refresh_failed(self, exc: Exception) -> Unauthorized:
        self.creds.refresh_token = None
        err = Unauthorized(
            "the session expired and could not be refreshed; log in again",
            status=401,
            request_id=getattr(exc, "request_id", None),
        )
        err.__cause__ = exc
        return err


class SyncHttp(_Base):
    """Blocking transport (httpx.Client)."""

    def __init__(
        self,
        options: HttpOptions,
        creds: _Credentials,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(options, creds)
        self.client = httpx.Client(transport=transport, **options.client_kwargs())

    def close(self) -> None:
        self.client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        auth: bool = True,
        data: Mapping[str, Any] | None = None,
        files: Mapping[str, Any] | None = None,
        content: Any = None,
    ) -> httpx.Response:
        """Send a request; returns the response (status < 400) or raises a NexusError.
        ``data``/``files`` send multipart form data and ``content`` a raw body (a file or
        bytes; not retried: a file is consumed)."""
        method = method.upper()
        refreshed = False
        attempt = 0
        while True:
            token = self.creds.token if auth else None
            try:
                resp = self.client.request(
                    method,
                    path,
                    params=_clean(params),
                    json=json,
                    data=data,
                    files=files,
                    content=content,
                    headers=self._headers(token, headers),
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                if method in IDEMPOTENT and attempt < self.options.retries:
                    attempt += 1
                    time.sleep(self.options.delay(attempt, None))
                    continue
                raise _connection_error(exc, self.url) from None
            if (
                resp.status_code == 401
                and not refreshed
                and auth
                and self._may_refresh(path, token)
            ):
                refreshed = True
                self._refresh(token)
                continue
            if (
                resp.status_code in RETRY_STATUSES
                and method in IDEMPOTENT
                and attempt < self.options.retries
            ):
                attempt += 1
                time.sleep(self.options.delay(attempt, resp))
                continue
            if resp.status_code >= 400:
                raise error_from_response(resp)
            return resp

    def _refresh(self, used_token: str | None) -> None:
        with self.creds.lock:
            if self.creds.token != used_token:  # another thread already refreshed
                return
            try:
                resp = self.request(
                    "POST",
                    "/v1/auth/refresh",
                    json={"refresh_token": self.creds.refresh_token},
                    auth=False,
                )
            except Unauthorized as exc:
                raise self._refresh_failed(exc) from None
            self._store_pair(_pair_from(resp.json()))


class AsyncHttp(_Base):
    """Non-blocking transport (httpx.AsyncClient)."""

    def __init__(
        self,
        options: HttpOptions,
        creds: _Credentials,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(options, creds)
        self.client = httpx.AsyncClient(transport=transport, **options.client_kwargs())
        self._lock: asyncio.Lock | None = None

    async def close(self) -> None:
        await self.client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        auth: bool = True,
    ) -> httpx.Response:
        """Send a request; returns the response (status < 400) or raises a NexusError."""
        method = method.upper()
        refreshed = False
        attempt = 0
        while True:
            token = self.creds.token if auth else None
            try:
                resp = await self.client.request(
                    method,
                    path,
                    params=_clean(params),
                    json=json,
                    headers=self._headers(token, headers),
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                if method in IDEMPOTENT and attempt < self.options.retries:
                    attempt += 1
                    await asyncio.sleep(self.options.delay(attempt, None))
                    continue
                raise _connection_error(exc, self.url) from None
            if (
                resp.status_code == 401
                and not refreshed
                and auth
                and self._may_refresh(path, token)
            ):
                refreshed = True
                await self._refresh(token)
                continue
            if (
                resp.status_code in RETRY_STATUSES
                and method in IDEMPOTENT
                and attempt < self.options.retries
            ):
                attempt += 1
                await asyncio.sleep(self.options.delay(attempt, resp))
                continue
            if resp.status_code >= 400:
                raise error_from_response(resp)
            return resp

    async def _refresh(self, used_token: str | None) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.creds.token != used_token:
                return
            try:
                resp = await self.request(
                    "POST",
                    "/v1/auth/refresh",
                    json={"refresh_token": self.creds.refresh_token},
                    auth=False,
                )
            except Unauthorized as exc:
                raise self._refresh_failed(exc) from None
            self._store_pair(_pair_from(resp.json()))


def _clean(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Drop None values; render booleans the way FastAPI reads them."""
    if not params:
        return None
    out: dict[str, Any] = {}
    for k, v in params.items():
        if v is None:
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif hasattr(v, "isoformat"):
            v = v.isoformat()
        out[k] = v
    return out
