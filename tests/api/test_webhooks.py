"""Webhooks: SSRF refusals, Standard Webhooks signatures, retries, disabling, replicas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from nexus.manager.features.vms import lifecycle
from tests.api.conftest import UserMaker, login, seed_vms
from tests.support.receiver import Receiver

FAST = {
    "webhook_allowlist": ["127.0.0.1"],
    "webhook_interval_s": 0.1,
    "webhook_retry_base_s": 0.2,
    "webhook_retry_max_s": 0.5,
    "events_poll_s": 0.1,
}
AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    yield r
    r.stop()


def _state(client: httpx.AsyncClient) -> Any:
    return client.app.state.nexus  # type: ignore[attr-defined]


async def _until(pred: Callable[[], Any], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.05)


async def _user(client: httpx.AsyncClient, username: str, role: str = "operator") -> Any:
    admin = await login(client, "admin", "admin-pass-123")
    r = await client.post(
        "/v1/users",
        json={"username": username, "password": f"{username}-password", "role": role},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    return r.json()["id"], await login(client, username, f"{username}-password")


async def test_targets_are_checked_against_ssrf(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    _uid, user = await make_user("sam", "operator")
    _vid, viewer = await make_user("vic", "viewer")
    for url in (
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://0.0.0.0/x",
        "ftp://example.com/x",
        "http://user:pw@example.com/x",
    ):
        r = await client.post("/v1/webhooks", json={"name": "w", "url": url}, headers=user)
        assert r.status_code == 400, (url, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "url" in r.json()["detail"]
    r = await client.post(
        "/v1/webhooks", json={"name": "w", "url": "http://203.0.113.9/x"}, headers=viewer
    )
    assert r.status_code == 403
    r = await client.post(
        "/v1/webhooks",
        json={"name": "w", "url": "http://203.0.113.9/x", "secret": "nope"},
        headers=user,
    )
    assert r.status_code == 400 and "secret" in r.json()["detail"]
    r = await client.post(
        "/v1/webhooks",
        json={"name": "w", "url": "http://203.0.113.9/x", "events": ["a;b"]},
        headers=user,
    )
    assert r.status_code == 400 and "events" in r.json()["detail"]
    r = await client.post("/v1/webhooks", json={"name": "w", "url": "http://x/"})
    assert r.status_code == 401


async def test_signed_delivery_of_my_events_only(
    app_factory: AppFactory, receiver: Receiver
) -> None:
    client = await app_factory(**FAST)
    uid, user = await _user(client, "wendy")
    oid, _other = await _user(client, "olga")
    r = await client.post(
        "/v1/webhooks",
        json={"name": "ci", "url": receiver.url, "events": ["vm.started"]},
        headers=user,
    )
    assert r.status_code == 201, r.text
    hook = r.json()
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    r = await client.get(f"/v1/webhooks/{hook['id']}", headers=user)
    assert r.status_code == 200 and "secret" not in r.json()
    r = await client.get(f"/v1/webhooks/{hook['id']}", headers=_other)
    assert r.status_code == 404
    await asyncio.sleep(0.3)  # the dispatcher starts from "now"
    state = _state(client)
    (mine,) = await seed_vms(state, uid, ["starting"])
    (theirs,) = await seed_vms(state, oid, ["starting"])
    await lifecycle.set_state(state, theirs, "running")
    await lifecycle.set_state(state, mine, "running")
    await _until(lambda: len(receiver.got) >= 1)
    await asyncio.sleep(0.5)  # nothing else may come
    assert len(receiver.got) == 1
    got = receiver.got[0]
    payload = Verifier(secret).verify(got.body, got.headers)  # raises when the signature is bad
    assert payload["type"] == "vm.started"
    assert payload["data"]["resource_id"] == mine
    assert got.headers["webhook-id"].startswith("msg_")
    for _ in range(300):
        r = await client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=user)
        (d,) = r.json()["items"]
        if d["status"] != "pending":
            break
        await asyncio.sleep(0.1)
    assert d["status"] == "succeeded" and d["attempts"] == 1 and d["last_status_code"] == 200
    assert d["id"] == got.headers["webhook-id"] and d["last_latency_ms"] >= 0
    assert d["last_response"].startswith("answer 1")


async def test_failed_delivery_is_retried_then_redelivered_by_hand(
    app_factory: AppFactory, receiver: Receiver
) -> None:
    receiver.codes = [500, 200]
    client = await app_factory(**FAST)
    _uid, user = await _user(client, "rita")
    r = await client.post(
        "/v1/webhooks", json={"name": "r", "url": receiver.url, "events": ["vm.*"]}, headers=user
    )
    hook = r.json()
    r = await client.post(f"/v1/webhooks/{hook['id']}/test", headers=user)
    assert r.status_code == 202, r.text
    delivery_id = r.json()["id"]
    await _until(lambda: len(receiver.got) >= 2)
    ids = {g.headers["webhook-id"] for g in receiver.got}
    assert ids == {delivery_id}  # the same id on the retry: receivers can de-duplicate
    for _ in range(300):  # the receiver answered; the manager records it a moment later
        r = await client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=user)
        (d,) = r.json()["items"]
        if d["status"] != "pending":
            break
        await asyncio.sleep(0.1)
    assert d["status"] == "succeeded" and d["attempts"] == 2, d
    assert [a["status_code"] for a in d["log"]] == [500, 200]
    r = await client.post(
        f"/v1/webhooks/{hook['id']}/deliveries/{delivery_id}/redeliver", headers=user
    )
    assert r.status_code == 202
    await _until(lambda: len(receiver.got) >= 3)
    assert receiver.got[2].headers["webhook-id"] == delivery_id


async def test_a_failing_webhook_is_disabled_and_its_owner_told(
    app_factory: AppFactory, receiver: Receiver
) -> None:
    receiver.codes = [503]
    client = await app_factory(**FAST, webhook_disable_after_s=0.6)
    _uid, user = await _user(client, "fay")
    r = await client.post(
        "/v1/webhooks", json={"name": "f", "url": receiver.url, "events": ["vm.*"]}, headers=user
    )
    hook = r.json()
    await client.post(f"/v1/webhooks/{hook['id']}/test", headers=user)

    async def disabled() -> bool:
        r = await client.get(f"/v1/webhooks/{hook['id']}", headers=user)
        return not r.json()["enabled"]

    for _ in range(300):
        if await disabled():
            break
        await asyncio.sleep(0.1)
    r = await client.get(f"/v1/webhooks/{hook['id']}", headers=user)
    body = r.json()
    assert not body["enabled"] and "503" in body["disabled_reason"], body
    r = await client.get("/v1/notifications", headers=user)
    assert "webhook_disabled" in [n["kind"] for n in r.json()["items"]]
    r = await client.get("/v1/events", params={"type": "webhook.disabled"}, headers=user)
    assert len(r.json()["items"]) == 1
    # enabling again clears the failure record
    r = await client.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": True}, headers=user)
    assert r.json()["enabled"] and r.json()["disabled_reason"] is None


async def test_two_replicas_deliver_each_event_once(
    app_factory: AppFactory, receiver: Receiver
) -> None:
    one = await app_factory(**FAST)
    two = await app_factory(**FAST)  # the same database: a second replica
    uid, user = await _user(one, "rex")
    r = await one.post(
        "/v1/webhooks", json={"name": "x", "url": receiver.url, "events": ["vm.*"]}, headers=user
    )
    assert r.status_code == 201
    await asyncio.sleep(0.3)
    ids = await seed_vms(_state(two), uid, ["stopped"] * 10)
    for i, vm_id in enumerate(ids):
        await lifecycle.set_state(_state(one if i % 2 else two), vm_id, "failed")
    await _until(lambda: len(receiver.got) >= 20, timeout=20)
    await asyncio.sleep(1.0)
    msg_ids = [g.headers["webhook-id"] for g in receiver.got]
    events = [json.loads(g.body)["data"]["id"] for g in receiver.got]
    assert len(msg_ids) == 20 and len(set(msg_ids)) == 20, msg_ids
    assert len(set(events)) == 20


async def test_the_secret_is_sealed_at_rest(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    from sqlalchemy import text

    _uid, user = await make_user("sid", "operator")
    # a public address (never contacted: created disabled)
    r = await client.post(
        "/v1/webhooks",
        json={"name": "s", "url": "http://8.8.8.8/x", "enabled": False},
        headers=user,
    )
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    async with _state(client).db.session() as s:
        raw = (await s.execute(text("SELECT secret FROM webhooks"))).scalar_one()
    assert raw.startswith("sealed:") and secret not in raw
    r = await client.get("/v1/webhooks", headers=user)
    assert "secret" not in r.json()["items"][0]
