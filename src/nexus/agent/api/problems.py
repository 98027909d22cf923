"""The agent's problem responses (RFC 9457), shared by its routers."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

PROBLEM_BASE = "https://nexus.dev/problems/"


def problem(status: int, type_: str, title: str, detail: str, request: Request) -> JSONResponse:
    """An RFC 9457 problem response."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": str(request.url.path),
    }
    rid = request.headers.get("x-request-id")
    if rid:
        body["request_id"] = rid
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )
