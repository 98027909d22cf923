"""The manager's health endpoints answer 503 when they should: the database does not answer,
a readiness check fails, migrations are not at head."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from nexus.manager import migrate
from nexus.manager.platform.appstate import ManagerState


def _state(client: httpx.AsyncClient) -> ManagerState:
    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    return state


async def test_ready_is_503_when_the_database_fails(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await client.get("/health/ready")).status_code == 200
    db = _state(client).db

    @asynccontextmanager
    async def broken() -> AsyncIterator[Any]:
        raise ConnectionRefusedError("database down")
        yield  # pragma: no cover

    monkeypatch.setattr(db, "session", broken)
    r = await client.get("/health/ready")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    # every check that needs the database says so (none turns into a 500)
    assert body["checks"] and all(
        v == "error: ConnectionRefusedError" for v in body["checks"].values()
    ), body
    assert (await client.get("/health/live")).status_code == 200  # the process is still up


async def test_ready_is_503_when_a_check_fails(client: httpx.AsyncClient) -> None:
    async def hosts_down(_state: ManagerState) -> tuple[bool, str]:
        return False, "no healthy host"

    async def fine(_state: ManagerState) -> tuple[bool, str]:
        return True, "ok"

    async def crashes(_state: ManagerState) -> tuple[bool, str]:
        raise RuntimeError("bug")

    checks = _state(client).extras.setdefault("ready_checks", {})
    checks.update(extra=hosts_down, other=fine)
    r = await client.get("/health/ready")
    assert r.status_code == 503
    assert r.json()["checks"]["extra"] == "no healthy host"
    assert r.json()["checks"]["other"] == "ok"
    checks["extra"] = crashes
    r = await client.get("/health/ready")
    assert r.status_code == 503 and r.json()["checks"]["extra"] == "error: RuntimeError"
    del checks["extra"]
    assert (await client.get("/health/ready")).status_code == 200


async def test_startup_is_503_until_migrations_are_at_head(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await client.get("/health/startup")
    assert r.status_code == 200 and r.json() == {"status": "ok", "migrations_at_head": True}

    async def behind(_db: object) -> bool:
        return False

    monkeypatch.setattr(migrate, "is_at_head", behind)
    r = await client.get("/health/startup")
    assert r.status_code == 503 and r.json() == {"status": "migrating", "migrations_at_head": False}

    async def fails(_db: object) -> bool:
        raise OSError("cannot read the schema version")

    monkeypatch.setattr(migrate, "is_at_head", fails)
    assert (await client.get("/health/startup")).status_code == 503
