"""Typed exceptions: every HTTP error response becomes a :class:`NexusError` subclass.

The manager answers errors as RFC 9457 ``application/problem+json``; the fields of that
document are attributes of the exception, so callers never parse bodies or see raw httpx errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from nexus.client._models import Operation


class NexusError(Exception):
    """Base of every error the SDK raises.

    Attributes:
        status: HTTP status code (0 when no response was received).
        type: the problem ``type`` URI (stable; e.g. ``https://nexus.dev/problems/not-found``).
        title: short human summary of the problem type.
        detail: the human explanation from the server.
        instance: the request path the problem is about.
        request_id: the server's request id (quote it in bug reports; it is in the logs).
        body: the whole problem document (may carry extra members such as ``errors``).

    Example:
        >>> try:
        ...     client.users.get("usr_missing")
        ... except NotFound as e:
        ...     print(e.detail, e.request_id)
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int = 0,
        type: str | None = None,
        title: str | None = None,
        instance: str | None = None,
        request_id: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.type = type
        self.title = title
        self.instance = instance
        self.request_id = request_id
        self.body = body or {}

    def __str__(self) -> str:
        parts = [self.detail]
        if self.status:
            parts.insert(0, f"[{self.status}]")
        if self.request_id:
            parts.append(f"(request id {self.request_id})")
        return " ".join(parts)


class Unauthorized(NexusError):
    """401: missing, invalid or expired credentials (and the refresh did not help)."""


class Forbidden(NexusError):
    """403: authenticated, but not allowed (role or token scope)."""


class NotFound(NexusError):
    """404: the resource does not exist or the caller may not see it."""


class Conflict(NexusError):
    """409: the request conflicts with the current state (e.g. a duplicate name)."""


class ValidationError(NexusError):
    """400/422: the request was rejected as invalid; ``body["errors"]`` lists the fields."""


class RateLimited(NexusError):
    """429: too many requests. ``retry_after`` is the server's hint in seconds (or None)."""

    def __init__(self, detail: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.retry_after = retry_after


class ServerError(NexusError):
    """5xx: the server (or a host agent behind it) failed."""


class InsufficientStorage(ServerError):
    """507: no host has the free disk a new root disk or volume needs (``body`` carries
    ``needed_mib`` and ``available_mib``); retrying will not help until space is freed."""


class NexusConnectionError(NexusError, ConnectionError):
    """The manager could not be reached (refused, DNS, TLS, timeout): no HTTP response."""


class OperationFailed(NexusError):
    """A long-running operation ended ``failed`` or ``cancelled``; ``operation`` has details."""

    def __init__(self, operation: Operation) -> None:
        detail = operation.error or f"operation {operation.id} {operation.status}"
        super().__init__(detail, status=0)
        self.operation = operation


class OperationTimeout(NexusError, TimeoutError):
    """Waiting for an operation took longer than the caller's timeout; it may still finish."""

    def __init__(self, operation: Operation, timeout: float) -> None:
        super().__init__(
            f"operation {operation.id} still {operation.status} after {timeout:g} s", status=0
        )
        self.operation = operation


_BY_STATUS: dict[int, type[NexusError]] = {
    400: ValidationError,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: ValidationError,
    429: RateLimited,
    507: InsufficientStorage,
}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> NexusError:
    """Turn an HTTP error response (problem+json or not) into the matching exception."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    status = response.status_code
    detail = body.get("detail") or body.get("title")
    if not isinstance(detail, str) or not detail:
        text = response.text.strip()
        detail = text[:300] if text else f"HTTP {status} {response.reason_phrase}".strip()
    kw: dict[str, Any] = {
        "status": status,
        "type": body.get("type"),
        "title": body.get("title"),
        "instance": body.get("instance"),
        "request_id": body.get("request_id") or response.headers.get("x-request-id"),
        "body": body,
    }
    if status == 429:
        return RateLimited(detail, retry_after=_retry_after(response), **kw)
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else NexusError
    return cls(detail, **kw)
