"""The live event stream and durable webhooks against a real ``nexus-manager serve``."""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook as Verifier

from nexus.client import Client
from tests.support.receiver import Receiver
from tests.support.server import LiveServer, free_port, login, start_manager

PASSWORD = "stream-admin-pass-1"
FAST = {
    "NEXUS_WEBHOOK_ALLOWLIST": '["127.0.0.1"]',
    "NEXUS_WEBHOOK_INTERVAL_S": "0.2",
    "NEXUS_WEBHOOK_RETRY_BASE_S": "0.3",
    "NEXUS_WEBHOOK_RETRY_MAX_S": "0.5",
    "NEXUS_EVENTS_POLL_S": "0.2",
}


def _user(srv: LiveServer, admin: dict[str, str], name: str) -> tuple[str, dict[str, str]]:
    r = httpx.post(
        f"{srv.url}/v1/users",
        json={"username": name, "password": f"{name}-password", "role": "operator"},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    return r.json()["id"], login(srv, f"{name}-password", name)


def _token(srv: LiveServer, h: dict[str, str], name: str) -> str:
    r = httpx.post(f"{srv.url}/v1/auth/tokens", json={"name": name}, headers=h)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _env(database_url: str) -> dict[str, str]:
    # ``database_url``: a fresh database (on PostgreSQL: truncated; other tests' rows are
    # sealed with their own keys)
    return {**FAST, "NEXUS_DATABASE_URL": database_url}


def test_stream_resumes_from_its_cursor_and_shows_only_mine(
    tmp_path: Path, database_url: str
) -> None:
    srv = start_manager(tmp_path / "m", admin_password=PASSWORD, env=_env(database_url))
    try:
        admin = login(srv, PASSWORD)
        _a_id, a = _user(srv, admin, "anna")
        _b_id, b = _user(srv, admin, "bert")
        client = Client(srv.url, token=a["Authorization"].split()[1])
        newest = next(iter(client.events.list(limit=1)))
        first = [_token(srv, a, f"a{i}") for i in range(3)]
        _token(srv, b, "b0")  # never for anna
        got = list(itertools.islice(client.events.stream(after=newest.id), 3))
        assert [e.resource_id for e in got] == first
        assert all(e.type == "token.created" for e in got)
        # disconnected (the generator is gone); more happens meanwhile
        _token(srv, b, "b1")
        second = [_token(srv, a, f"a{i}") for i in range(3, 6)]
        resumed = list(itertools.islice(client.events.stream(after=got[-1].id), 3))
        assert [e.resource_id for e in resumed] == second  # no gap, no duplicate
        assert [e.id for e in resumed] == sorted(e.id for e in resumed)
        assert resumed[0].id > got[-1].id
        # the raw protocol: Last-Event-ID resumes too, and unauthenticated is refused
        with httpx.stream(
            "GET",
            f"{srv.url}/v1/events/stream",
            headers={**a, "Last-Event-ID": str(got[-1].id)},
            timeout=10,
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            ids = []
            for line in resp.iter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                if len(ids) == 3:
                    break
        assert ids == [e.id for e in resumed]
        r = httpx.get(f"{srv.url}/v1/events/stream", timeout=10)
        assert r.status_code == 401
        client.close()
    finally:
        srv.stop()


def _deliveries(srv: LiveServer, h: dict[str, str], hook: str) -> list[Any]:
    r = httpx.get(f"{srv.url}/v1/webhooks/{hook}/deliveries", headers=h)
    assert r.status_code == 200, r.text
    items: list[Any] = r.json()["items"]
    return items


def test_undelivered_webhooks_are_delivered_after_a_kill(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"  # nobody listens yet
    srv = start_manager(tmp_path / "m", admin_password=PASSWORD, env=_env(database_url))
    receiver = None
    try:
        admin = login(srv, PASSWORD)
        _uid, user = _user(srv, admin, "kim")
        r = httpx.post(
            f"{srv.url}/v1/webhooks",
            json={"name": "k", "url": url, "events": ["token.*"]},
            headers=user,
        )
        assert r.status_code == 201, r.text
        hook, secret = r.json()["id"], r.json()["secret"]
        time.sleep(0.6)  # the dispatcher has its cursor
        token_id = _token(srv, user, "t1")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ds = _deliveries(srv, user, hook)
            if ds and ds[0]["attempts"] >= 1:
                break
            time.sleep(0.2)
        assert ds and ds[0]["status"] == "pending" and ds[0]["last_error"], ds
        msg_id = ds[0]["id"]
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        receiver = Receiver().start(port)
        srv = start_manager(tmp_path / "m", admin_password=PASSWORD, env=_env(database_url))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not receiver.got:
            time.sleep(0.2)
        assert receiver.got, "not delivered after the restart"
        got = receiver.got[0]
        assert got.headers["webhook-id"] == msg_id
        body = Verifier(secret).verify(got.body, got.headers)
        assert body["type"] == "token.created" and body["data"]["resource_id"] == token_id
    finally:
        srv.stop()
        if receiver is not None:
            receiver.stop()
