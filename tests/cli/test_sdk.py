"""The SDK (sync and async) against a real manager, plus retry policy on a mock transport."""

from __future__ import annotations

import uuid

import httpx
import pytest

from nexus.client import (
    AsyncClient,
    Client,
    Forbidden,
    Health,
    NexusConnectionError,
    NexusError,
    NotFound,
    ServerError,
    TokenPair,
    Unauthorized,
    User,
    ValidationError,
)
from tests.cli.conftest import ADMIN_PASSWORD, free_port


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def test_refresh_on_401_and_retry(manager_url: str) -> None:
    seen: list[TokenPair] = []
    with Client.login(manager_url, "admin", ADMIN_PASSWORD, on_token_refresh=seen.append) as c:
        assert len(seen) == 1  # the login's pair
        old_refresh = c.refresh_token
        c.token = "corrupted.access.token"
        me = c.me()  # 401 -> refresh -> retry
        assert me.user.username == "admin"
        assert len(seen) == 2
        assert seen[1].refresh_token != seen[0].refresh_token
        assert c.token == seen[1].access_token and c.refresh_token == seen[1].refresh_token
        assert c.refresh_token != old_refresh
    # the old refresh token was rotated away: a client holding it cannot recover
    with Client(manager_url, token="bad", refresh_token=old_refresh) as stale:
        with pytest.raises(Unauthorized) as ei:
            stale.me()
        assert "log in again" in ei.value.detail


def test_typed_errors_carry_request_id(manager_url: str) -> None:
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        with pytest.raises(NotFound) as nf:
            c.users.get("usr_missing")
        e = nf.value
        assert e.status == 404 and e.type and e.type.endswith("/not-found")
        assert e.request_id and e.instance == "/v1/users/usr_missing"
        assert "usr_missing" in e.detail
        with pytest.raises(ValidationError) as ve:
            c.users.create("X bad name", "long-password")
        assert ve.value.status == 422 and ve.value.body.get("errors")
        ro = c.tokens.create(_name("ro"), scopes=["read"], expires_in_days=1)
    with Client(manager_url, token=ro.token) as reader:
        assert any(u.username == "admin" for u in reader.users.list())
        with pytest.raises(Forbidden) as fb:
            reader.users.create(_name("x"), "long-password")
        assert fb.value.request_id and "write" in fb.value.detail
    with Client(manager_url, token="nope") as anon, pytest.raises(Unauthorized):
        anon.me()


def test_pagination_beyond_one_page(manager_url: str) -> None:
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        made = [c.users.create(_name("pg"), "long-password", role="viewer") for _ in range(5)]
        pager = c.users.list(page_size=2)
        pages = list(pager.pages())
        assert len(pages) >= 3 and all(len(p.items) <= 2 for p in pages)
        ids = [u.id for u in c.users.list(page_size=2)]
        assert len(ids) == len(set(ids))
        assert {u.id for u in made} <= set(ids)
        assert len(c.users.list(limit=3, page_size=2).to_list()) == 3
        assert all(isinstance(u, User) for u in c.users.list(limit=2))

        events = list(c.audit.list(action="user.create", page_size=2))
        assert len(events) >= 5
        assert len({e.id for e in events}) == len(events)
        assert [e.at for e in events] == sorted((e.at for e in events), reverse=True)
        updated = c.users.update(made[0].id, disabled=True)
        assert updated.disabled is True
        for u in made:
            c.users.delete(u.id)
        with pytest.raises(NotFound):
            c.users.get(made[0].id)


def _check_health(h: Health) -> None:
    """The manager is ready and its database answers (test_cli_hosts removes the hosts it
    registers, so no stale host makes the shared manager unavailable)."""
    assert h.ok and h.checks["database"] == "ok", h


def test_health_version_and_connection_error(manager_url: str) -> None:
    with Client(manager_url) as c:
        _check_health(c.health())
        v = c.version()
        assert v.server == v.client
    with Client(f"http://127.0.0.1:{free_port()}", token="x", retries=1, backoff=0.01) as dead:
        with pytest.raises(NexusConnectionError) as ce:
            dead.me()
        assert isinstance(ce.value, ConnectionError) and isinstance(ce.value, NexusError)


async def test_async_client(manager_url: str) -> None:
    seen: list[TokenPair] = []
    async with await AsyncClient.login(
        manager_url, "admin", ADMIN_PASSWORD, on_token_refresh=seen.append
    ) as c:
        c.token = "corrupted"
        assert (await c.me()).user.username == "admin"
        assert len(seen) == 2
        made = [await c.users.create(_name("as"), "long-password") for _ in range(3)]
        ids = [u.id async for u in c.users.list(page_size=2)]
        assert {u.id for u in made} <= set(ids) and len(ids) == len(set(ids))
        events = await c.audit.list(action="user.create", page_size=2, limit=3).to_list()
        assert len(events) == 3
        with pytest.raises(NotFound) as nf:
            await c.users.get("usr_missing")
        assert nf.value.request_id
        tok = await c.tokens.create(_name("t"), scopes=["read"])
        assert (await c.tokens.get(tok.id)).name == tok.name
        await c.tokens.delete(tok.id)
        _check_health(await c.health())
        await c.logout()
        assert c.token is None


def test_retries_only_idempotent_methods() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(
            503,
            json={"type": "x", "title": "Service unavailable", "status": 503, "detail": "busy"},
            headers={"content-type": "application/problem+json", "x-request-id": "rid1"},
        )

    with Client(
        "http://nexus.test",
        token="t",
        retries=2,
        backoff=0.001,
        transport=httpx.MockTransport(handler),
    ) as c:
        with pytest.raises(ServerError) as e:
            c.users.get("usr_1")
        assert calls == ["GET", "GET", "GET"]
        assert e.value.request_id == "rid1" and e.value.detail == "busy"
        calls.clear()
        with pytest.raises(ServerError):
            c.users.create("abc", "long-password")
        assert calls == ["POST"]


async def test_backup_sync_and_async(manager_url: str) -> None:
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        op = c.backup(keep=3)
        assert op.status == "succeeded" and op.kind == "backup.create"
        assert op.result and str(op.result["path"]).endswith(".tar")
        assert len(op.result["sha256"]) == 64
        viewer = _name("bv")
        c.users.create(viewer, "long-password", role="viewer")
    with Client.login(manager_url, viewer, "long-password") as v, pytest.raises(Forbidden):
        v.backup()
    async with await AsyncClient.login(manager_url, "admin", ADMIN_PASSWORD) as ac:
        pending = await ac.backup(keep=3, wait=False)
        assert pending.kind == "backup.create"
        done = await ac.operations.wait(pending.id, timeout=120)
        assert done.status == "succeeded", done
