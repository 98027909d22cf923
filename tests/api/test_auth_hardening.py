"""Issue 12, auth area: secrets at rest, token rules, proxies, argon2 off the event loop,
audit growth, and the smaller holes (concurrent refreshes, JWTs without ``exp``, key length,
WebSocket tickets, the bootstrap password file). Each test tries the attack."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from nexus.core import security, signing
from nexus.core.db import InsecureDatabase
from nexus.core.settings import Settings
from nexus.core.signing import SigningKeyError
from nexus.manager import migrate
from nexus.manager.app import create_app

from .conftest import ADMIN_PASSWORD, PG_URL, UserMaker, login

AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]
SECRET = "an-operator-chosen-secret-key-of-forty-chars"
sqlite_only = pytest.mark.skipif(bool(PG_URL), reason="file permissions: SQLite only")


def _state(client: httpx.AsyncClient) -> Any:
    return client.app.state.nexus  # type: ignore[attr-defined]


async def _claims(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    token = headers["Authorization"].split()[1]
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- 1. secrets at rest -----------------------------------------------------------------------


@sqlite_only
async def test_forged_token_signed_with_the_old_database_key_is_refused(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """A database from before the fix holds the signing key; after the upgrade that key is
    gone from the table and a token forged with it gets 401 (it used to get /v1/users)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'old' / 'nexus.db'}"
    (tmp_path / "old").mkdir()
    await migrate.upgrade(url, "0002")
    old_key = "k" * 64
    from sqlalchemy import create_engine

    eng = create_engine(url.replace("+aiosqlite", ""))
    with eng.begin() as conn:
        conn.execute(
            text("INSERT INTO system_values (key, value) VALUES ('jwt_signing_key', :v)"),
            {"v": old_key},
        )
    eng.dispose()
    os.chmod(tmp_path / "old" / "nexus.db", 0o600)
    app = create_app(settings_factory(database_url=url))
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("10.9.8.7", 5000)),
            base_url="http://nexus.test",
        )
        admin = await login(client, "admin", ADMIN_PASSWORD)
        claims = await _claims(client, admin)
        now = datetime.now(UTC)
        forged = {**claims, "iat": now, "exp": now + timedelta(minutes=5)}
        kid = jwt.get_unverified_header(admin["Authorization"][7:]).get("kid")
        for headers in ({}, {"kid": kid} if kid else {}):
            token = jwt.encode(forged, old_key, algorithm="HS256", headers=headers)
            r = await client.get("/v1/users", headers=_bearer(token))
            assert r.status_code == 401, r.text
        async with app.state.nexus.db.session() as s:
            rows = (await s.execute(text("SELECT key FROM system_values"))).scalars().all()
        assert "jwt_signing_key" not in rows
        assert (await client.get("/v1/users", headers=admin)).status_code == 200
        await client.aclose()


@sqlite_only
async def test_state_dir_database_and_key_file_are_private(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    """Created 0700/0600 even when the process umask is lax (the tests' umask is 022)."""
    fresh = tmp_path / "fresh"
    client = await app_factory(
        database_url=f"sqlite+aiosqlite:///{fresh / 'nexus.db'}", state_dir=fresh
    )
    await login(client, "admin", ADMIN_PASSWORD)  # writes: -wal/-shm exist now
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700
    files = [fresh / n for n in ("nexus.db", "nexus.db-wal", "nexus.db-shm", "jwt-keys.json")]
    assert files[0].exists() and files[3].exists()
    for f in files:
        if f.exists():
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f


@sqlite_only
async def test_start_refuses_a_group_or_world_readable_database(
    settings_factory: Callable[..., Settings], database_url: str, tmp_path: Path
) -> None:
    db_file = Path(database_url.split("///", 1)[1])
    os.chmod(db_file, 0o644)
    app = create_app(settings_factory())
    with pytest.raises(InsecureDatabase, match=r"chmod 600 .*nexus\.db"):
        async with app.router.lifespan_context(app):
            pass
    # the command line says it in one line and exits 2, before anything is opened
    from nexus.manager.admin_cli import app as cli

    env = {"NEXUS_DATABASE_URL": database_url, "NEXUS_STATE_DIR": str(tmp_path / "state")}
    out = CliRunner().invoke(cli, ["migrate"], env=env)
    assert out.exit_code == 2 and "chmod 600" in out.output, out.output
    assert stat.S_IMODE(os.stat(db_file).st_mode) == 0o644  # the fix is the operator's


async def test_short_secret_key_is_refused_at_start(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    app = create_app(settings_factory(secret_key="too-short-a-key"))
    with pytest.raises(SigningKeyError, match="at least 32"):
        async with app.router.lifespan_context(app):
            pass
    from nexus.manager.admin_cli import app as cli

    env = {"NEXUS_SECRET_KEY": "short", "NEXUS_STATE_DIR": str(tmp_path / "s2")}
    out = CliRunner().invoke(cli, ["serve"], env=env)
    assert out.exit_code == 2 and "at least 32" in out.output, out.output


async def test_jwt_without_exp_iat_or_kid_is_refused(app_factory: AppFactory) -> None:
    client = await app_factory(secret_key=SECRET)
    admin = await login(client, "admin", ADMIN_PASSWORD)
    claims = await _claims(client, admin)
    kid = jwt.get_unverified_header(admin["Authorization"][7:]).get("kid")
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    no_iat = {k: v for k, v in claims.items() if k != "iat"}
    with_kid = {"kid": kid} if kid else {}
    for payload, headers in ((no_exp, with_kid), (no_iat, with_kid), (claims, {})):
        token = jwt.encode(payload, SECRET, algorithm="HS256", headers=headers)
        assert (await client.get("/v1/users", headers=_bearer(token))).status_code == 401
    # the same claims, properly signed with the kid, work (the test forges nothing else)
    good = jwt.encode(claims, SECRET, algorithm="HS256", headers=with_kid)
    assert (await client.get("/v1/users", headers=_bearer(good))).status_code == 200


async def test_rotate_key_keeps_old_tokens_for_one_access_lifetime(
    app_factory: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing, "RELOAD_CHECK_S", 0.0)
    client = await app_factory(access_token_ttl_s=600, auth_cache_ttl_s=0)
    before = await login(client, "admin", ADMIN_PASSWORD)
    old_kid = jwt.get_unverified_header(before["Authorization"][7:])["kid"]
    from nexus.manager.admin_cli import app as cli

    st = _state(client).settings
    env = {
        "NEXUS_DATABASE_URL": st.database_url,
        "NEXUS_STATE_DIR": str(st.state_dir),
        "NEXUS_ACCESS_TOKEN_TTL_S": "600",
    }
    out = CliRunner().invoke(cli, ["rotate-key"], env=env)
    assert out.exit_code == 0, out.output
    after = await login(client, "admin", ADMIN_PASSWORD)
    new_kid = jwt.get_unverified_header(after["Authorization"][7:])["kid"]
    assert new_kid != old_kid and new_kid in out.output
    assert (await client.get("/v1/users", headers=before)).status_code == 200
    assert (await client.get("/v1/users", headers=after)).status_code == 200
    # one access-token lifetime later the old key is no longer accepted, even for a token
    # whose own exp has not passed
    later = datetime.now(UTC) + timedelta(seconds=601)
    monkeypatch.setattr(signing, "utcnow", lambda: later)
    assert (await client.get("/v1/users", headers=before)).status_code == 401
    assert (await client.get("/v1/users", headers=after)).status_code == 200
    keyfile = signing.key_file(st.state_dir)
    ring = signing.KeyRing.from_file(keyfile, grace=timedelta(seconds=600))
    assert ring.kids == [new_kid]
    # the file still holds the old key until the next rotation drops it
    CliRunner().invoke(cli, ["rotate-key"], env=env)
    assert old_kid not in keyfile.read_text()


# --- 2. token rules ---------------------------------------------------------------------------


async def _api_token(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> Any:
    r = await client.post("/v1/auth/tokens", json={"name": "t", **body}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def test_api_token_cannot_change_the_password(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    uid, session = await make_user("paula", "operator")
    tok = _bearer((await _api_token(client, session))["token"])
    # the thief does not know the current password: the token alone used to be enough
    r = await client.patch(f"/v1/users/{uid}", json={"password": "taken-over-1"}, headers=tok)
    assert r.status_code == 403 and "password session" in r.json()["detail"]
    r = await client.patch(
        f"/v1/users/{uid}",
        json={"password": "taken-over-1", "current_password": "paula-password"},
        headers=tok,
    )
    assert r.status_code == 403 and "password session" in r.json()["detail"]
    await login(client, "paula", "paula-password")  # unchanged


async def test_own_password_change_needs_the_current_password(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    uid, session = await make_user("quinn", "operator")
    r = await client.patch(f"/v1/users/{uid}", json={"password": "new-pass-123"}, headers=session)
    assert r.status_code == 400 and "current_password" in r.json()["detail"]
    r = await client.patch(
        f"/v1/users/{uid}",
        json={"password": "new-pass-123", "current_password": "not-it"},
        headers=session,
    )
    assert r.status_code == 403 and "current_password" in r.json()["detail"]
    await login(client, "quinn", "quinn-password")  # unchanged


async def test_api_tokens_cannot_mint_tokens(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    _, session = await make_user("rita", "operator")
    tok = _bearer((await _api_token(client, session))["token"])
    r = await client.post(
        "/v1/auth/tokens", json={"name": "child", "expires_in_days": None}, headers=tok
    )
    assert r.status_code == 403 and "log in" in r.json()["detail"]


async def test_password_change_revokes_other_sessions_and_api_tokens(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    uid, session = await make_user("sam", "operator")
    other = await login(client, "sam", "sam-password")
    tok = _bearer((await _api_token(client, session))["token"])
    r = await client.patch(
        f"/v1/users/{uid}",
        json={"password": "fresh-pass-1", "current_password": "sam-password"},
        headers=session,
    )
    assert r.status_code == 200, r.text
    assert r.json()["revoked_sessions"] == 1 and r.json()["revoked_api_tokens"] == 1
    assert (await client.get("/v1/auth/me", headers=other)).status_code == 401
    assert (await client.get("/v1/auth/me", headers=tok)).status_code == 401
    assert (await client.get("/v1/auth/me", headers=session)).status_code == 200
    # an admin reset ends every session of that user, and needs no current password
    r = await client.patch(f"/v1/users/{uid}", json={"password": "reset-pass-1"}, headers=admin)
    assert r.status_code == 200 and r.json()["revoked_sessions"] == 1
    assert (await client.get("/v1/auth/me", headers=session)).status_code == 401


async def test_admin_set_maximum_token_lifetime(app_factory: AppFactory) -> None:
    client = await app_factory(api_token_max_lifetime_days=30, auth_cache_ttl_s=0)
    admin = await login(client, "admin", ADMIN_PASSWORD)
    for days in (None, 31):
        r = await client.post(
            "/v1/auth/tokens", json={"name": "x", "expires_in_days": days}, headers=admin
        )
        assert r.status_code == 400 and "at most 30" in r.json()["detail"]
    tok = await _api_token(client, admin, expires_in_days=30)
    assert (await client.get("/v1/auth/me", headers=_bearer(tok["token"]))).status_code == 200
    # a token from before the maximum (no expiry, 40 days old) stopped working at 30 days
    from nexus.manager.features.auth.models import ApiToken

    async with _state(client).db.session() as s:
        row = await s.get(ApiToken, tok["id"])
        row.expires_at = None
        row.created_at = datetime.now(UTC) - timedelta(days=40)
    r = await client.get("/v1/auth/me", headers=_bearer(tok["token"]))
    assert r.status_code == 401 and "expired" in r.json()["detail"]


# --- 3. proxies and per-username throttling ---------------------------------------------------


async def _served(settings: Settings, peer: str) -> tuple[httpx.AsyncClient, Any]:
    """A client of the app as ``nexus-manager serve`` wraps it in uvicorn (proxy headers)."""
    import uvicorn

    from nexus.manager import admin_cli as cli

    options = getattr(cli, "uvicorn_options", lambda _s: {})(settings)  # {}: uvicorn defaults
    app = create_app(settings)
    config = uvicorn.Config(app, log_config=None, **options)
    config.load()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=config.loaded_app, client=(peer, 5000)),
        base_url="http://nexus.test",
    )
    return client, app


async def test_forwarded_for_from_localhost_is_not_trusted_by_default(
    settings_factory: Callable[..., Settings],
) -> None:
    client, app = await _served(settings_factory(rate_limit_auth="3/minute"), "127.0.0.1")
    async with app.router.lifespan_context(app):
        codes = []
        for i in range(4):
            r = await client.post(
                "/v1/auth/login",
                json={"username": "admin", "password": "nope"},
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
            )
            codes.append(r.status_code)
        assert codes == [401, 401, 401, 429]  # a fresh spoofed address does not reset it
        async with app.state.nexus.db.session() as s:
            ips = (
                (
                    await s.execute(
                        text("SELECT source_ip FROM audit_events WHERE action = 'auth.login'")
                    )
                )
                .scalars()
                .all()
            )
        assert ips and set(ips) == {"127.0.0.1"}
        await client.aclose()


async def test_forwarded_for_from_a_trusted_proxy_is_used(
    settings_factory: Callable[..., Settings],
) -> None:
    client, app = await _served(settings_factory(trusted_proxies=["10.0.0.0/8"]), "10.1.2.3")
    async with app.router.lifespan_context(app):
        r = await client.post(
            "/v1/auth/login",
            json={"username": "admin", "password": "nope"},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
        assert r.status_code == 401
        async with app.state.nexus.db.session() as s:
            ip = (
                await s.execute(
                    text("SELECT source_ip FROM audit_events WHERE action = 'auth.login'")
                )
            ).scalar_one()
        assert ip == "198.51.100.7"
        await client.aclose()


async def test_failed_logins_for_one_user_are_throttled_across_addresses(
    app_factory: AppFactory,
) -> None:
    client = await app_factory()  # default: 5/minute;20/hour;100/day per username
    app = client.app  # type: ignore[attr-defined]

    def from_ip(ip: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(ip, 5000)), base_url="http://n.test"
        )

    codes = []
    for i in range(6):
        async with from_ip(f"192.0.2.{i}") as c:
            r = await c.post("/v1/auth/login", json={"username": "admin", "password": "x"})
            codes.append(r.status_code)
    assert codes == [401] * 5 + [429]
    assert "retry-after" in r.headers and "failed attempts" in r.json()["detail"]
    async with from_ip("192.0.2.99") as c:  # even the right password waits out the backoff
        r = await c.post("/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert r.status_code == 429
        r = await c.post("/v1/auth/login", json={"username": "ghost", "password": "x"})
        assert r.status_code == 401  # other names are not affected


# --- 4. argon2 off the event loop -------------------------------------------------------------


class _GatedHasher:
    """Stands in for argon2: each verify blocks its thread until the test releases it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.released_in_time: list[bool] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def verify(self, _hash: str, _password: str) -> bool:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.started.set()
        self.released_in_time.append(self.release.wait(timeout=5))
        with self._lock:
            self.in_flight -= 1
        return False

    def hash(self, password: str) -> str:
        return "x"


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)


async def test_password_checks_leave_the_event_loop_free(
    app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a password check runs, other requests are served: /health/live completes
    between the start and the end of a verify (on the event loop it could not)."""
    client = await app_factory()
    gate = _GatedHasher()
    monkeypatch.setattr(security, "_hasher", gate)
    task = asyncio.ensure_future(
        client.post("/v1/auth/login", json={"username": "admin", "password": "wrong"})
    )
    await _until(gate.started.is_set)
    assert gate.started.is_set()
    assert (await client.get("/health/live")).status_code == 200
    gate.release.set()
    assert (await task).status_code == 401
    assert gate.released_in_time == [True]


async def test_password_checks_run_with_bounded_concurrency(
    app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await app_factory(password_hash_workers=2, rate_limit_login_user="100/minute")
    gate = _GatedHasher()
    monkeypatch.setattr(security, "_hasher", gate)
    tasks = [
        asyncio.ensure_future(
            client.post("/v1/auth/login", json={"username": "admin", "password": f"w{i}"})
        )
        for i in range(6)
    ]
    await _until(lambda: gate.in_flight >= 2)
    await asyncio.sleep(0.2)  # room for a third to start, if the bound did not hold
    in_flight = gate.in_flight
    gate.release.set()
    codes = [r.status_code for r in await asyncio.gather(*tasks)]
    assert codes == [401] * 6
    assert in_flight == 2 and gate.max_in_flight == 2


# --- 5. audit growth --------------------------------------------------------------------------


async def test_anonymous_401s_are_one_audit_row_per_source_and_window(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for _ in range(12):
        assert (await client.post("/v1/users", json={})).status_code == 401
    items = (
        await client.get("/v1/audit", params={"action": "post /v1/users"}, headers=admin)
    ).json()["items"]
    assert len(items) == 1
    assert items[0]["after"]["count"] == 12 and items[0]["source_ip"] == "10.9.8.7"


async def test_long_denied_action_is_audited_cut_to_the_column(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """On PostgreSQL a value longer than its column fails the insert: the denial was lost."""
    ro = await _api_token(client, admin, scopes=["read"])
    long_id = "u" * 150
    r = await client.patch(f"/v1/users/{long_id}", json={}, headers=_bearer(ro["token"]))
    assert r.status_code == 403
    items = (await client.get("/v1/audit", params={"outcome": "denied"}, headers=admin)).json()[
        "items"
    ]
    mine = [e for e in items if e["action"].startswith("patch /v1/users/uuu")]
    assert len(mine) == 1 and len(mine[0]["action"]) <= 64


# --- 6. smaller holes -------------------------------------------------------------------------


async def test_concurrent_refreshes_of_one_token_exactly_one_wins(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    refresh = r.json()["refresh_token"]
    results = await asyncio.gather(
        *(client.post("/v1/auth/refresh", json={"refresh_token": refresh}) for _ in range(6))
    )
    codes = sorted(x.status_code for x in results)
    assert codes == [200, 401, 401, 401, 401, 401], [x.text for x in results]


async def test_bootstrap_password_file_is_deleted_when_the_admin_changes_it(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    client = await app_factory(bootstrap_admin_password="")
    pw_file = tmp_path / "state" / "initial-admin-password"
    assert stat.S_IMODE(os.stat(pw_file).st_mode) == 0o600
    pw = pw_file.read_text().strip()
    h = await login(client, "admin", pw)
    me = (await client.get("/v1/auth/me", headers=h)).json()["user"]["id"]
    assert pw_file.exists()  # a login alone keeps it (the admin may not have saved it)
    r = await client.patch(
        f"/v1/users/{me}", json={"password": "admins-own-pw", "current_password": pw}, headers=h
    )
    assert r.status_code == 200, r.text
    assert not pw_file.exists()


async def test_a_refused_websocket_ticket_is_spent(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    from .test_guest_api import add_vm, ws_attempt

    owner_id, owner = await make_user("tess", "operator")
    vm = await add_vm(client, owner_id, state="stopped")
    vm2 = await add_vm(client, owner_id, state="stopped")
    ticket = (await client.post(f"/v1/vms/{vm}/shell/ticket", headers=owner)).json()["ticket"]
    out = await ws_attempt(client, f"/v1/vms/{vm2}/shell/ws", query=f"ticket={ticket}")
    assert out.status == 401  # refused: wrong VM
    out = await ws_attempt(client, f"/v1/vms/{vm}/shell/ws", query=f"ticket={ticket}")
    assert out.status == 401 and "used" in out.body["detail"]  # and spent
