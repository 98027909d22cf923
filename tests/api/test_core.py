"""The secure manager core: health, errors, auth, users, tokens, RBAC, audit, rate limits."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import ADMIN_PASSWORD, UserMaker, login

PROBLEM = "application/problem+json"


async def test_health_endpoints_need_no_auth(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    r = await client.get("/health/ready")
    assert r.status_code == 200 and r.json()["checks"]["database"] == "ok"
    r = await client.get("/health/startup")
    assert r.status_code == 200 and r.json()["migrations_at_head"] is True


async def test_errors_are_problem_json_with_request_id(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    r = await client.get("/nowhere", headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["request_id"] == "abc-123" and r.headers["x-request-id"] == "abc-123"
    assert body["type"].endswith("/not-found") and "no route" in body["detail"]
    r = await client.put("/health/live")
    assert r.status_code == 405 and r.headers["content-type"].startswith(PROBLEM)
    r = await client.post("/v1/users", json={"username": "X!", "password": "s"}, headers=admin)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["errors"] and "username" in r.json()["detail"]
    r = await client.post(
        "/v1/auth/login", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "Traceback" not in r.text


async def test_security_headers_and_bad_request_id_replaced(client: httpx.AsyncClient) -> None:
    r = await client.get("/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert (
        r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 32
    )


async def test_body_size_limit(app_factory) -> None:  # type: ignore[no-untyped-def]
    c = await app_factory(max_body_bytes=2048)
    r = await c.post(
        "/v1/auth/login", content=b"x" * 5000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.headers["content-type"].startswith(PROBLEM)


async def test_login_refresh_rotation_and_logout(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200
    pair = r.json()
    assert pair["token_type"] == "bearer" and pair["expires_in"] == 900
    h = {"Authorization": f"Bearer {pair['access_token']}"}
    me = (await client.get("/v1/auth/me", headers=h)).json()
    assert me["user"]["username"] == "admin" and me["auth"] == "session"
    r2 = await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r2.status_code == 200
    new = r2.json()
    assert new["refresh_token"] != pair["refresh_token"]
    # The old refresh token stops working, and replaying it revokes the session.
    r3 = await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r3.status_code == 401
    r4 = await client.post("/v1/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert r4.status_code == 401
    assert (await client.get("/v1/auth/me", headers=h)).status_code == 401
    # Logout ends a fresh session.
    h2 = await login(client, "admin", ADMIN_PASSWORD)
    assert (await client.post("/v1/auth/logout", headers=h2)).status_code == 204
    assert (await client.get("/v1/auth/me", headers=h2)).status_code == 401


async def test_wrong_password_is_401_and_audited(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for name in ("admin", "ghost"):
        r = await client.post("/v1/auth/login", json={"username": name, "password": "wrong-pw"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid username or password"
    events = (await client.get("/v1/audit?action=auth.login&outcome=denied", headers=admin)).json()
    assert len(events["items"]) == 2
    assert events["items"][0]["source_ip"] == "10.9.8.7"


async def test_users_crud_and_rbac(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    op_id, op = await make_user("olga", "operator")
    v_id, viewer = await make_user("vic", "viewer")
    # duplicate name -> 409
    r = await client.post(
        "/v1/users", json={"username": "olga", "password": "x" * 8}, headers=admin
    )
    assert r.status_code == 409
    # admin lists all; others see only themselves
    assert {
        u["username"] for u in (await client.get("/v1/users", headers=admin)).json()["items"]
    } == {
        "admin",
        "olga",
        "vic",
    }
    assert [u["username"] for u in (await client.get("/v1/users", headers=op)).json()["items"]] == [
        "olga"
    ]
    # another user is invisible: 404, not 403
    assert (await client.get(f"/v1/users/{v_id}", headers=op)).status_code == 404
    # viewers and operators may not create users
    for h in (viewer, op):
        r = await client.post(
            "/v1/users", json={"username": "eve", "password": "x" * 10}, headers=h
        )
        assert r.status_code == 403
    # self password change needs the current password and ends the other sessions;
    # role change by non-admin is 403
    r = await client.patch(f"/v1/users/{op_id}", json={"role": "admin"}, headers=op)
    assert r.status_code == 403
    other = await login(client, "olga", "olga-password")
    r = await client.patch(f"/v1/users/{op_id}", json={"password": "new-password-1"}, headers=op)
    assert r.status_code == 400 and "current_password" in r.json()["detail"]
    r = await client.patch(
        f"/v1/users/{op_id}",
        json={"password": "new-password-1", "current_password": "olga-password"},
        headers=op,
    )
    assert r.status_code == 200 and r.json()["revoked_sessions"] == 1
    assert (await client.get("/v1/auth/me", headers=other)).status_code == 401
    assert (await client.get("/v1/auth/me", headers=op)).status_code == 200
    op = await login(client, "olga", "new-password-1")
    # admin disables the viewer: their session ends and login fails
    r = await client.patch(f"/v1/users/{v_id}", json={"disabled": True}, headers=admin)
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert (await client.get("/v1/auth/me", headers=viewer)).status_code == 401
    r = await client.post("/v1/auth/login", json={"username": "vic", "password": "vic-password"})
    assert r.status_code == 401
    # delete
    assert (await client.delete(f"/v1/users/{v_id}", headers=admin)).status_code == 204
    assert (await client.get(f"/v1/users/{v_id}", headers=admin)).status_code == 404
    me = (await client.get("/v1/auth/me", headers=admin)).json()["user"]["id"]
    assert (await client.delete(f"/v1/users/{me}", headers=admin)).status_code == 400


async def test_api_tokens_scopes_expiry_and_revocation(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    r = await client.post(
        "/v1/auth/tokens",
        json={"name": "ro", "scopes": ["read"], "expires_in_days": 7},
        headers=admin,
    )
    assert r.status_code == 201
    tok = r.json()
    assert tok["token"].startswith("nxs_") and tok["scopes"] == ["read"]
    ro = {"Authorization": f"Bearer {tok['token']}"}
    assert (await client.get("/v1/users", headers=ro)).status_code == 200
    r = await client.post("/v1/users", json={"username": "zed", "password": "x" * 9}, headers=ro)
    assert r.status_code == 403 and "read scope" in r.json()["detail"]
    listed = (await client.get("/v1/auth/tokens", headers=admin)).json()["items"]
    assert listed[0]["last_used_at"] is not None and "token" not in listed[0]
    # the secret is never stored in clear
    app = client.app  # type: ignore[attr-defined]
    async with app.state.nexus.db.session() as s:
        from sqlalchemy import text

        hashes = (await s.execute(text("SELECT token_hash FROM api_tokens"))).scalars().all()
    assert tok["token"] not in hashes and len(hashes[0]) == 64
    # revoke -> 401
    assert (await client.delete(f"/v1/auth/tokens/{tok['id']}", headers=admin)).status_code == 204
    assert (await client.get("/v1/users", headers=ro)).status_code == 401
    # expired -> 401
    rw = (await client.post("/v1/auth/tokens", json={"name": "rw"}, headers=admin)).json()
    async with app.state.nexus.db.session() as s:
        from datetime import UTC, datetime

        from nexus.manager.features.auth.models import ApiToken

        (await s.get(ApiToken, rw["id"])).expires_at = datetime(2000, 1, 1, tzinfo=UTC)
    r = await client.get("/v1/users", headers={"Authorization": f"Bearer {rw['token']}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    # someone else's token is invisible
    _, op = await make_user("otto", "operator")
    assert (await client.delete(f"/v1/auth/tokens/{rw['id']}", headers=op)).status_code == 404
    assert (
        await client.get("/v1/users", headers={"Authorization": "Bearer nxs_bogus"})
    ).status_code == 401


async def test_audit_trail_of_the_readme_walkthrough(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    op_id, _ = await make_user("oscar", "operator")
    v_id, viewer = await make_user("vera", "viewer")
    await client.post("/v1/auth/tokens", json={"name": "ro", "scopes": ["read"]}, headers=admin)
    r = await client.post(
        "/v1/users", json={"username": "mallory", "password": "x" * 10}, headers=viewer
    )
    assert r.status_code == 403
    page = (await client.get("/v1/audit", headers=admin)).json()
    actions = [(e["action"], e["outcome"]) for e in page["items"]]
    assert ("user.create", "denied") in actions
    assert actions.count(("user.create", "success")) == 3  # + the bootstrap admin
    assert ("token.create", "success") in actions
    denied = next(
        e for e in page["items"] if e["outcome"] == "denied" and e["action"] == "user.create"
    )
    assert denied["actor_username"] == "vera" and denied["request_id"]
    created = next(
        e for e in page["items"] if e["resource_id"] == op_id and e["action"] == "user.create"
    )
    assert created["after"]["role"] == "operator" and "password" not in created["after"]
    assert created["actor_username"] == "admin"
    # filters and cursor pagination
    f = (await client.get(f"/v1/audit?resource_id={v_id}", headers=admin)).json()["items"]
    assert {e["resource_id"] for e in f} == {v_id}
    p1 = (await client.get("/v1/audit?limit=2", headers=admin)).json()
    p2 = (await client.get(f"/v1/audit?limit=2&cursor={p1['next_cursor']}", headers=admin)).json()
    assert len(p1["items"]) == 2 and p1["next_cursor"]
    assert not {e["id"] for e in p1["items"]} & {e["id"] for e in p2["items"]}
    # non-admins see only their own actions
    mine = (await client.get("/v1/audit", headers=viewer)).json()["items"]
    assert mine and all(e["actor_user_id"] == v_id for e in mine)


async def test_unauthenticated_mutation_is_audited(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    assert (await client.post("/v1/users", json={})).status_code == 401
    items = (await client.get("/v1/audit?outcome=denied", headers=admin)).json()["items"]
    assert any(e["action"] == "post /v1/users" for e in items)


async def test_login_rate_limit(app_factory) -> None:  # type: ignore[no-untyped-def]
    c = await app_factory(rate_limit_auth="3/minute")
    codes = []
    for _ in range(4):
        r = await c.post("/v1/auth/login", json={"username": "admin", "password": "nope"})
        codes.append(r.status_code)
    assert codes == [401, 401, 401, 429]
    assert int(r.headers["retry-after"]) >= 1 and r.headers["content-type"].startswith(PROBLEM)


async def test_create_rate_limit_is_per_user(app_factory) -> None:  # type: ignore[no-untyped-def]
    c = await app_factory(rate_limit_create="2/minute")
    h = await login(c, "admin", ADMIN_PASSWORD)
    codes = [
        (
            await c.post("/v1/users", json={"username": f"u{i}", "password": "x" * 8}, headers=h)
        ).status_code
        for i in range(3)
    ]
    assert codes == [201, 201, 429]


async def test_random_bootstrap_password_is_written_once(app_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = await app_factory(bootstrap_admin_password="")
    pw = (tmp_path / "state" / "initial-admin-password").read_text().strip()
    assert len(pw) >= 12
    await login(c, "admin", pw)


@pytest.mark.parametrize("path", ["/v1/operations", "/v1/audit", "/v1/users", "/v1/auth/me"])
async def test_garbage_bearer_is_401(client: httpx.AsyncClient, path: str) -> None:
    for value in ("Bearer", "Bearer x.y.z", "Basic Zm9vOmJhcg==", "Bearer nxs_"):
        r = await client.get(path, headers={"Authorization": value})
        assert r.status_code == 401, value
        assert r.headers["www-authenticate"] == "Bearer"
