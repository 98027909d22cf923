"""TLS (issue 12), manager side: the pin of an https agent learned at registration, a
different certificate refused as a 502 problem naming the mismatch, certificate rotation by
re-registering with the host token; and live managers over HTTPS (with the embedded agent
too). Certificates are made here (trustme)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from typer.testing import CliRunner

from nexus.manager import admin_cli as manager_cli
from tests.api.conftest import ADMIN_PASSWORD, login, seed_vms
from tests.support.hosts import HOST_FACTS
from tests.support.server import free_port, start_manager
from tests.support.tls import CertFiles, ca_file, issue

Client = Callable[..., Awaitable[httpx.AsyncClient]]


def fake_agent_app() -> FastAPI:
    """Just the agent's console route."""
    app = FastAPI()

    @app.get("/v1/vms/{vm_id}/console", response_class=PlainTextResponse)
    async def console(vm_id: str) -> str:
        return f"console of {vm_id}"

    return app


@contextlib.asynccontextmanager
async def https_agent(port: int, cert: CertFiles) -> AsyncIterator[None]:
    """The fake agent on 127.0.0.1:``port``, serving ``cert``."""
    config = uvicorn.Config(
        fake_agent_app(),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(cert.cert),
        ssl_keyfile=str(cert.key),
        timeout_graceful_shutdown=1,  # the manager keeps its agent connections open
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def join_token(client: httpx.AsyncClient, admin: dict[str, str]) -> str:
    """A new join token."""
    r = await client.post("/v1/hosts/join-tokens", headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def test_the_agent_certificate_is_pinned_and_rotated_by_re_registering(
    app_factory: Client, tmp_path: Path
) -> None:
    client = await app_factory(allow_loopback_agents=True)
    admin = await login(client, "admin", ADMIN_PASSWORD)
    ca = trustme.CA()
    first, second = issue(ca, tmp_path, "first"), issue(ca, tmp_path, "second")
    port = free_port()
    agent_url = f"https://127.0.0.1:{port}"
    body: dict[str, Any] = {
        "join_token": await join_token(client, admin),
        "name": "tls-host",
        "agent_url": agent_url,
        "facts": HOST_FACTS,
        "agent_cert_sha256": first.sha256,
    }
    r = await client.post("/v1/hosts/register", json=body)
    assert r.status_code == 200, r.text
    host = r.json()
    r = await client.get(f"/v1/hosts/{host['host_id']}", headers=admin)
    assert r.json()["agent_cert_sha256"] == first.sha256
    state = client.app.state.nexus  # type: ignore[attr-defined]
    admin_id = (await client.get("/v1/auth/me", headers=admin)).json()["user"]["id"]
    (vm_id,) = await seed_vms(state, admin_id, ["running"], host_id=host["host_id"])

    async with https_agent(port, first):
        r = await client.get(f"/v1/vms/{vm_id}/console", headers=admin)
        assert r.status_code == 200, r.text
        assert r.text == f"console of {vm_id}"

    # the agent now presents another certificate: refused, and the user is told why
    async with https_agent(port, second):
        r = await client.get(f"/v1/vms/{vm_id}/console", headers=admin)
        assert r.status_code == 502, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        detail = r.json()["detail"]
        assert "not the one it registered with" in detail
        assert first.sha256 in detail and second.sha256 in detail
        assert "re-register" in detail

        # rotation: a new join token alone cannot take the host over ...
        body.update(join_token=await join_token(client, admin), agent_cert_sha256=second.sha256)
        r = await client.post("/v1/hosts/register", json=body)
        assert r.status_code == 409, r.text
        # ... its stored host token can (what nexus-agent sends when it registers again)
        body["join_token"] = await join_token(client, admin)
        auth = {"Authorization": f"Bearer {host['host_token']}"}
        r = await client.post("/v1/hosts/register", json=body, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["host_id"] == host["host_id"]
        r = await client.get(f"/v1/vms/{vm_id}/console", headers=admin)
        assert r.status_code == 200, r.text
        r = await client.get(f"/v1/hosts/{host['host_id']}", headers=admin)
        assert r.json()["agent_cert_sha256"] == second.sha256


# --- live managers over HTTPS ----------------------------------------------------------------


def test_manager_serves_https_with_the_configured_certificate(
    tmp_path: Path, database_url: str
) -> None:
    ca = trustme.CA()
    cert = issue(ca, tmp_path / "tls", "manager")
    ca_pem = str(ca_file(ca, tmp_path / "tls"))
    srv = start_manager(
        tmp_path / "state",
        admin_password=ADMIN_PASSWORD,
        env={
            "NEXUS_TLS_CERT_FILE": str(cert.cert),
            "NEXUS_TLS_KEY_FILE": str(cert.key),
            "NEXUS_DATABASE_URL": database_url,  # a fresh one (its own sealing key)
        },
        verify=ca_pem,
    )
    try:
        assert srv.url.startswith("https://127.0.0.1:")
        r = httpx.get(f"{srv.url}/health/live", verify=ca_pem, timeout=5)
        assert r.status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{srv.url}/health/live", timeout=5)  # the test CA is nobody's CA
        with pytest.raises(httpx.HTTPError):  # no plain http on the TLS port
            httpx.get(srv.url.replace("https://", "http://") + "/health/live", timeout=5)
    finally:
        srv.stop()


def serve_fails(tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """``nexus-manager serve`` that must stop at start (exit 2): returns its stderr."""
    for key in os.environ:
        if key.startswith("NEXUS_"):
            monkeypatch.delenv(key)
    env = {
        "NEXUS_STATE_DIR": str(tmp_path / "state"),
        "NEXUS_EMBEDDED_AGENT": "false",
        "NEXUS_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **env,
    }

    def no_serving(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("serve started the server")

    monkeypatch.setattr(uvicorn, "run", no_serving)
    result = CliRunner().invoke(manager_cli.app, ["serve", "--port", str(free_port())], env=env)
    assert result.exit_code == 2, result.output
    return result.stderr


def test_serve_stops_in_one_line_when_tls_files_do_not_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    a, b = issue(ca, tmp_path, "a"), issue(ca, tmp_path, "b")
    for env, msg in [
        ({"NEXUS_TLS_CERT_FILE": str(a.cert)}, "tls_key_file is not set"),
        (
            {"NEXUS_TLS_CERT_FILE": str(tmp_path / "x.pem"), "NEXUS_TLS_KEY_FILE": str(a.key)},
            "cannot read",
        ),
        ({"NEXUS_TLS_CERT_FILE": str(a.cert), "NEXUS_TLS_KEY_FILE": str(b.key)}, "not the key"),
    ]:
        err = serve_fails(tmp_path, env, monkeypatch)
        assert msg in err and len(err.strip().splitlines()) == 1, err


def test_all_in_one_with_tls_registers_its_embedded_agent(
    tmp_path: Path, database_url: str
) -> None:
    ca = trustme.CA()
    cert = issue(ca, tmp_path / "tls", "manager")
    ca_pem = str(ca_file(ca, tmp_path / "tls"))
    srv = start_manager(
        tmp_path / "state",
        admin_password=ADMIN_PASSWORD,
        env={
            "NEXUS_TLS_CERT_FILE": str(cert.cert),
            "NEXUS_TLS_KEY_FILE": str(cert.key),
            "NEXUS_EMBEDDED_AGENT": "true",
            "NEXUS_AGENT_PORT": str(free_port()),
            "NEXUS_HEARTBEAT_INTERVAL_S": "0.5",
            "NEXUS_DATABASE_URL": database_url,
        },
        verify=ca_pem,
    )
    try:
        with httpx.Client(base_url=srv.url, verify=ca_pem, timeout=10) as http:
            r = http.post("/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
            h = {"Authorization": f"Bearer {r.json()['access_token']}"}
            (host,) = http.get("/v1/hosts", headers=h).json()["items"]
            assert host["status"] == "healthy"
            # the embedded agent serves HTTPS with the manager's certificate, pinned
            assert host["agent_url"].startswith("https://127.0.0.1:")
            assert host["agent_cert_sha256"] == cert.sha256
            # heartbeats keep arriving over https (the agent pins the manager's certificate)
            first = host["last_heartbeat_at"]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if (
                    http.get(f"/v1/hosts/{host['id']}", headers=h).json()["last_heartbeat_at"]
                    != first
                ):
                    break
                time.sleep(0.2)
            else:
                pytest.fail("no heartbeat over https")
        log = srv.log_path.read_text()
        assert "agent_unreachable" not in log and "certificate" not in log.lower(), log[-2000:]
    finally:
        srv.stop()


# --- the sealing key ---------------------------------------------------------------------------


async def test_rotate_sealing_key_then_prune_after_the_restart_resealed(
    app_factory: Client, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexus.core import sealing
    from nexus.manager.features.hosts import service as hosts

    client = await app_factory()
    admin = await login(client, "admin", ADMIN_PASSWORD)
    r = await client.post(
        "/v1/hosts/register",
        json={
            "join_token": await join_token(client, admin),
            "name": "sealed-host",
            "agent_url": "http://sealed-host:8081",
            "facts": HOST_FACTS,
        },
    )
    assert r.status_code == 200, r.text
    agent_token = r.json()["agent_token"]
    for key in os.environ:
        if key.startswith("NEXUS_"):
            monkeypatch.delenv(key)
    env = {"NEXUS_STATE_DIR": str(tmp_path / "state"), "NEXUS_DATABASE_URL": database_url}
    state_dir = tmp_path / "state"

    async def run(*args: str) -> Any:
        # in a thread: the command runs its own event loop
        return await asyncio.to_thread(CliRunner().invoke, manager_cli.app, list(args), env=env)

    assert len(sealing.read_key_file(sealing.key_file(state_dir))) == 1

    result = await run("rotate-sealing-key")
    assert result.exit_code == 0, result.output
    assert len(sealing.read_key_file(sealing.key_file(state_dir))) == 2
    # the row is still sealed with the old key: pruning now would lose it
    result = await run("rotate-sealing-key", "--prune")
    assert result.exit_code == 1 and "restart every manager" in result.stderr
    assert len(sealing.read_key_file(sealing.key_file(state_dir))) == 2

    state = client.app.state.nexus  # type: ignore[attr-defined]
    await hosts.start(state)  # what every manager does at start-up: re-seal with the newest key
    result = await run("rotate-sealing-key", "--prune")
    assert result.exit_code == 0, result.output
    assert "1 old sealing key" in result.output
    keys = sealing.read_key_file(sealing.key_file(state_dir))
    assert len(keys) == 1
    sealing._known.clear()  # forget every key but the file's: the value must open with it
    sealing.configure(keys)
    async with state.db.session() as s:
        (host,) = (await s.execute(hosts.select(hosts.Host))).scalars().all()
        assert host.agent_token == agent_token
