"""Pure-ASGI middleware: request id, request context, body size limit, security headers and a
JSON access log line per request (with ``duration_ms``)."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexus.core.errors import PROBLEM_CONTENT_TYPE, PayloadTooLarge
from nexus.core.logging import get_logger
from nexus.manager.platform.context import actor_var, request_id_var, source_ip_var

log = get_logger("nexus.access")
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        b"connect-src 'self' ws: wss:; frame-ancestors 'none'",
    ),
]
# Paths whose bodies may be large (streamed uploads check their own limit).
UNLIMITED_BODY_PATHS = ("/v1/images/upload", "/v1/container-images/import")


class RequestContextMiddleware:
    """Sets ``X-Request-ID`` (kept from the client if sane), logs, limits bodies."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not _REQUEST_ID_OK.match(rid):
            rid = uuid.uuid4().hex
        client = scope.get("client")
        ip = client[0] if client else None
        t_rid, t_ip = request_id_var.set(rid), source_ip_var.set(ip)
        t_actor = actor_var.set(None)  # set by authentication
        structlog.contextvars.bind_contextvars(request_id=rid)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status_holder = {"status": 0}
        path: str = scope.get("path", "")
        # Set once a chunked body went over the limit: whatever the app answers then (FastAPI
        # turns an error raised while it reads a body into its own 400) is replaced by a 413.
        over = {"limit": False, "sent": False}

        if scope["type"] == "http" and not path.startswith(UNLIMITED_BODY_PATHS):
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await self._too_large(send, rid)
                self._log(scope, 413, start)
                return
            receive = self._limited(receive, over)

        async def send_wrapper(message: Message) -> None:
            if over["limit"] and (over["sent"] or not status_holder["status"]):
                if not over["sent"]:
                    over["sent"] = True
                    status_holder["status"] = 413
                    await self._too_large(send, rid)
                return
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                hdrs = list(message.get("headers", []))
                hdrs.append((b"x-request-id", rid.encode()))
                hdrs.extend(SECURITY_HEADERS)
                message["headers"] = hdrs
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except _BodyTooLarge:
            if not over["sent"] and not status_holder["status"]:
                over["sent"] = True
                await self._too_large(send, rid)
            status_holder["status"] = 413
        finally:
            if scope["type"] == "http":
                self._log(scope, status_holder["status"], start)
            structlog.contextvars.unbind_contextvars("request_id", "user_id")
            request_id_var.reset(t_rid)
            source_ip_var.reset(t_ip)
            actor_var.reset(t_actor)

    def _limited(self, receive: Receive, over: dict[str, bool]) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    over["limit"] = True
                    raise _BodyTooLarge
            return message

        return wrapped

    async def _too_large(self, send: Send, rid: str) -> None:
        body = json.dumps(
            PayloadTooLarge(f"request body exceeds {self.max_body} bytes").body(request_id=rid)
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", rid.encode()),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _log(scope: Scope, status: int, start: float) -> None:
        extra: dict[str, Any] = {}
        principal = scope.get("state", {}).get("principal")
        if principal is not None:
            extra["user_id"] = principal.user_id
        path = scope.get("path", "")
        emit = log.debug if path.endswith("/heartbeat") or path.startswith("/health") else log.info
        emit(
            "request",
            method=scope.get("method"),
            path=scope.get("path"),
            status=status,
            duration_ms=round((time.perf_counter() - start) * 1000, 2),
            **extra,
        )


class _BodyTooLarge(Exception):
    pass
