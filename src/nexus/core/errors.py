"""RFC 9457 problem details: every error a client sees is ``application/problem+json``.

Services raise :class:`Problem` subclasses; the manager's exception handlers render them with
the request id. ``type`` values are stable URIs under ``https://nexus.dev/problems/``.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://nexus.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """An error with an HTTP status, a stable type slug and a human detail."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        audit: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra or {}
        # For denied attempts: what was tried (action, resource_type, resource_id).
        self.audit = audit

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def body(self, instance: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        """The problem+json document."""
        doc: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        if request_id:
            doc["request_id"] = request_id
        doc.update(self.extra)
        return doc


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kw)


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(Problem):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class ValidationFailed(Problem):
    status, slug, title = 422, "validation-error", "Validation error"


class RateLimited(Problem):
    status, slug, title = 429, "rate-limited", "Too many requests"


class ServiceUnavailable(Problem):
    status, slug, title = 503, "unavailable", "Service unavailable"


class InternalError(Problem):
    status, slug, title = 500, "internal-error", "Internal server error"


class UpstreamError(Problem):
    status, slug, title = 502, "upstream-error", "Host agent error"


_BY_STATUS: dict[int, type[Problem]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        ValidationFailed,
        RateLimited,
        ServiceUnavailable,
        InternalError,
        UpstreamError,
    )
}


def problem_for_status(status: int, detail: str | None = None) -> Problem:
    """A problem instance for a bare HTTP status (e.g. from Starlette's 404/405)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        p = Problem(detail)
        p.status = status
        p.slug = f"http-{status}"
        p.title = f"HTTP {status}"
        return p
    return cls(detail)
