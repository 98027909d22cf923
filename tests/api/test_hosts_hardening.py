"""Issue 12, hosts: re-registration needs the host's credential or an admin; ``agent_url`` is
validated; agent tokens are sealed in the database; non-admins get a narrow host view;
template specs are checked like ``VmCreate`` and only admins publish templates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import bindparam, text

from nexus.core.ids import new_id
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.templates.models import Template
from nexus.manager.platform.appstate import ManagerState
from tests.api.conftest import UserMaker, bearer, register_host, seed_vms
from tests.support.hosts import HOST_FACTS


async def _join_token(client: httpx.AsyncClient, admin: dict[str, str]) -> str:
    r = await client.post("/v1/hosts/join-tokens", headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def _register(
    client: httpx.AsyncClient,
    token: str,
    name: str,
    url: str = "http://agent.example:8081",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        "/v1/hosts/register",
        json={"join_token": token, "name": name, "agent_url": url, "facts": HOST_FACTS},
        headers=headers or {},
    )


def _state(client: httpx.AsyncClient) -> ManagerState:
    return client.app.state.nexus  # type: ignore[attr-defined,no-any-return]


# --- finding 7: re-registration ------------------------------------------------------------


async def test_reregistering_a_host_needs_its_credential_or_an_admin(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    first = await register_host(client, admin, "node-a")
    other = await register_host(client, admin, "node-b")
    _, alice = await make_user("alice", "operator")

    # a fresh join token alone does not take over an existing host
    r = await _register(client, await _join_token(client, admin), "node-a")
    assert r.status_code == 409, r.text
    assert "node-a" in r.json()["detail"] and "host token" in r.json()["detail"]
    # ... nor does another host's credential or a non-admin user's token
    for h in (bearer(other), alice):
        r = await _register(client, await _join_token(client, admin), "node-a", headers=h)
        assert r.status_code == 403, r.text
    # the refused attempts left the host's credential working
    hb = {"facts": HOST_FACTS, "vms": []}
    r = await client.post(f"/v1/hosts/{first['host_id']}/heartbeat", json=hb, headers=bearer(first))
    assert r.status_code == 204

    # the host itself (its current host token) may re-register: same id, new credentials
    r = await _register(client, await _join_token(client, admin), "node-a", headers=bearer(first))
    assert r.status_code == 200, r.text
    again = r.json()
    assert again["host_id"] == first["host_id"] and again["host_token"] != first["host_token"]
    r = await client.post(f"/v1/hosts/{first['host_id']}/heartbeat", json=hb, headers=bearer(first))
    assert r.status_code == 401  # the old credential is gone
    # so may an admin (replacing a lost machine)
    r = await _register(client, await _join_token(client, admin), "node-a", headers=admin)
    assert r.status_code == 200 and r.json()["host_id"] == first["host_id"]
    denied = [
        e
        for e in (await client.get("/v1/audit?limit=100", headers=admin)).json()["items"]
        if e["action"] == "host.register" and e["outcome"] == "denied"
    ]
    assert len(denied) >= 3


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest",  # link-local (cloud metadata)
        "http://[fe80::1]:8081",
        "http://127.0.0.1:8081",  # loopback
        "http://[::1]:8081",
        "http://localhost:8081",  # a name resolving to loopback
        "http://224.0.0.1:8081",  # multicast
        "http://0.0.0.0:8081",  # unspecified
        "ftp://agent.example/",  # not http(s)
        "file:///etc/passwd",
        "http://:8081",  # no host
    ],
)
async def test_register_refuses_bad_agent_urls(
    client: httpx.AsyncClient, admin: dict[str, str], url: str
) -> None:
    token = await _join_token(client, admin)
    r = await _register(client, token, "bad-url", url)
    assert r.status_code == 422, r.text
    assert "agent_url" in r.json()["detail"]
    # the join token was not used up by the refused attempt
    r = await _register(client, token, "bad-url", "https://10.1.2.3:8081")
    assert r.status_code == 200, r.text


async def test_loopback_agent_url_for_the_embedded_agent_or_when_allowed(
    app_factory: Any, settings_factory: Any
) -> None:
    from tests.api.conftest import ADMIN_PASSWORD, login

    client = await app_factory()
    admin = await login(client, "admin", ADMIN_PASSWORD)
    state = _state(client)
    async with state.db.session() as s:
        admin_id = (await s.execute(text("SELECT id FROM users WHERE username='admin'"))).scalar()
        system_token = await hosts.mint_system_join_token(s, str(admin_id))
    r = await _register(client, system_token, "embedded", "http://127.0.0.1:8081")
    assert r.status_code == 200, r.text
    r = await _register(client, await _join_token(client, admin), "other", "http://127.0.0.1:1")
    assert r.status_code == 422

    allowed = await app_factory(allow_loopback_agents=True)
    admin2 = await login(allowed, "admin", ADMIN_PASSWORD)
    r = await _register(allowed, await _join_token(allowed, admin2), "lo", "http://127.0.0.1:9")
    assert r.status_code == 200, r.text


# --- item 1: host credentials sealed at rest ------------------------------------------------


async def test_agent_token_is_sealed_in_the_database(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    reg = await register_host(client, admin, "sealed-node")
    state = _state(client)
    async with state.db.session() as s:
        raw = (
            await s.execute(
                text("SELECT agent_token, host_token_hash FROM hosts WHERE id = :i"),
                {"i": reg["host_id"]},
            )
        ).one()
        host = await s.get(Host, reg["host_id"])
        assert host is not None
        client_ = hosts.agent_client(state, host)
    assert reg["agent_token"] not in raw[0] and raw[0].startswith("sealed:v1:")
    assert reg["host_token"] not in raw[1]
    # the manager still presents the clear token to the agent
    assert client_.ws_target("/x")[1]["Authorization"] == f"Bearer {reg['agent_token']}"
    key_file = state.settings.state_dir / "sealing-keys.json"
    assert key_file.exists() and key_file.stat().st_mode & 0o077 == 0
    assert reg["agent_token"] not in key_file.read_text()


async def test_clear_tokens_of_older_rows_are_sealed_at_start(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    state = _state(client)
    async with state.db.session() as s:
        admin_id = (await s.execute(text("SELECT id FROM users WHERE username='admin'"))).scalar()
        await s.execute(
            text(
                "INSERT INTO hosts (id, name, agent_url, agent_token, host_token_hash, drained, "
                "driver, accel, vcpus, memory_mib, disk_free_mib, version, created_by_user_id, "
                "created_at, updated_at) VALUES ('host_old', 'old', 'http://old:1', "
                "'clear-old-token', :h, false, '', '', 0, 0, 0, '', :u, :t, :t)"
            ).bindparams(bindparam("t", type_=Host.__table__.c.created_at.type)),
            {"h": "0" * 64, "u": admin_id, "t": datetime(2026, 1, 1, tzinfo=UTC)},
        )
    await hosts.seal_host_tokens(state)
    async with state.db.session() as s:
        raw = (await s.execute(text("SELECT agent_token FROM hosts WHERE id='host_old'"))).scalar()
        host = await s.get(Host, "host_old")
    assert raw is not None and raw.startswith("sealed:v1:") and "clear-old-token" not in raw
    assert host is not None and host.agent_token == "clear-old-token"


# --- point 9: host views ---------------------------------------------------------------------


async def test_non_admins_get_a_narrow_host_view(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    reg = await register_host(client, admin, "view-node")
    hid = reg["host_id"]
    state = _state(client)
    admin_id = (await client.get("/v1/auth/me", headers=admin)).json()["user"]["id"]
    await seed_vms(state, admin_id, ["running", "running"], host_id=hid, vcpus=2)
    vic_id, vic = await make_user("vic", "viewer")
    await seed_vms(state, vic_id, ["stopped"], host_id=hid)

    full = (await client.get(f"/v1/hosts/{hid}", headers=admin)).json()
    assert full["agent_url"] == "http://view-node:8081" and full["vm_count"] == 3
    for body in [
        (await client.get(f"/v1/hosts/{hid}", headers=vic)).json(),
        *(await client.get("/v1/hosts", headers=vic)).json()["items"],
    ]:
        assert "agent_url" not in body, body
        assert not any("token" in k for k in body)
        assert "vm_count" not in body and "allocated_vcpus" not in body
        assert body["name"] == "view-node" and body["status"] == "healthy"
        assert body["vcpus"] == HOST_FACTS["vcpus"]
    # metrics: a non-admin's counts are their own VMs only
    m = (await client.get(f"/v1/hosts/{hid}/metrics", headers=vic)).json()
    assert m["vm_count"] == 1 and m["vm_counts"]["stopped"] == 1 and m["vm_counts"]["running"] == 0
    assert m["allocated_vcpus"] == 1
    m = (await client.get(f"/v1/hosts/{hid}/metrics", headers=admin)).json()
    assert m["vm_count"] == 3 and m["allocated_vcpus"] == 5


# --- point 9: templates ----------------------------------------------------------------------

SPEC: dict[str, Any] = {"vcpus": 1, "memory_mib": 256, "image": "default"}
BAD_SPECS: list[tuple[str, dict[str, Any]]] = [
    ("networks that are not names", {**SPEC, "networks": [{"id": 1}]}),
    ("more networks than a VM may join", {**SPEC, "networks": [f"n{i}" for i in range(9)]}),
    (
        "64 labels: no room for nexus.template",
        {**SPEC, "labels": {f"k{i}": "v" for i in range(64)}},
    ),
]


@pytest.mark.parametrize(("why", "spec"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
async def test_template_specs_are_checked_like_vm_create(
    client: httpx.AsyncClient, admin: dict[str, str], why: str, spec: dict[str, Any]
) -> None:
    r = await client.post("/v1/templates", json={"name": "t", "spec": spec}, headers=admin)
    assert r.status_code == 422, (why, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    ok = await client.post("/v1/templates", json={"name": "ok", "spec": SPEC}, headers=admin)
    assert ok.status_code == 201
    r = await client.patch(f"/v1/templates/{ok.json()['id']}", json={"spec": spec}, headers=admin)
    assert r.status_code == 422, (why, r.text)


@pytest.mark.parametrize(("why", "spec"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
async def test_instantiating_a_stored_bad_spec_is_422_not_500(
    client: httpx.AsyncClient, admin: dict[str, str], why: str, spec: dict[str, Any]
) -> None:
    state = _state(client)
    admin_id = (await client.get("/v1/auth/me", headers=admin)).json()["user"]["id"]
    async with state.db.session() as s:  # written before the checks existed
        s.add(Template(id=new_id("tpl"), name="old", description="", public=False, spec=spec,
                       created_by_user_id=admin_id))  # fmt: skip
    r = await client.post("/v1/templates/old/instantiate", json={"name": "x"}, headers=admin)
    assert r.status_code == 422, (why, r.text)
    assert "template" in r.json()["detail"]


async def test_instantiate_overrides_that_overflow_labels_are_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    labels = {f"k{i}": "v" for i in range(40)}
    r = await client.post(
        "/v1/templates", json={"name": "l", "spec": {**SPEC, "labels": labels}}, headers=admin
    )
    assert r.status_code == 201, r.text
    more = {f"o{i}": "v" for i in range(30)}
    r = await client.post(
        "/v1/templates/l/instantiate",
        json={"name": "x", "overrides": {"labels": more}},
        headers=admin,
    )
    assert r.status_code == 422, r.text


async def test_only_admins_publish_templates(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    _, alice = await make_user("alice", "operator")
    body = {"name": "pub", "spec": SPEC, "public": True}
    r = await client.post("/v1/templates", json=body, headers=alice)
    assert r.status_code == 403, r.text
    assert "admin" in r.json()["detail"]
    r = await client.post("/v1/templates", json={**body, "public": False}, headers=alice)
    assert r.status_code == 201
    tid = r.json()["id"]
    r = await client.patch(f"/v1/templates/{tid}", json={"public": True}, headers=alice)
    assert r.status_code == 403
    assert (await client.get(f"/v1/templates/{tid}", headers=alice)).json()["public"] is False
    r = await client.patch(f"/v1/templates/{tid}", json={"public": True}, headers=admin)
    assert r.status_code == 200 and r.json()["public"] is True
    # the owner may still edit the (now public) template, and unpublish it
    r = await client.patch(f"/v1/templates/{tid}", json={"public": False}, headers=alice)
    assert r.status_code == 200 and r.json()["public"] is False
    r = await client.post("/v1/templates", json={**body, "name": "pub2"}, headers=admin)
    assert r.status_code == 201
