"""Per-request context (request id, source IP, principal) carried in contextvars.

The audit log and structured logs read these, so service functions do not have to thread
them through every call.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
source_ip_var: ContextVar[str | None] = ContextVar("source_ip", default=None)


@dataclass(frozen=True)
class RequestInfo:
    """What the audit log records about the current request."""

    request_id: str | None
    source_ip: str | None


def current_request() -> RequestInfo:
    """The request id and source IP of the current request (None outside a request)."""
    return RequestInfo(request_id_var.get(), source_ip_var.get())


@dataclass(frozen=True)
class Actor:
    """Who causes the changes of the current request (and of the background work it
    started: tasks copy the context they are created in)."""

    user_id: str
    username: str


actor_var: ContextVar[Actor | None] = ContextVar("actor", default=None)


def current_actor() -> Actor | None:
    """The authenticated caller of the current request, or None (start-up, loops)."""
    return actor_var.get()
