"""Registration, stored credentials, heartbeats and the served API (run_agent/run_embedded)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Request

from nexus.agent.daemon import main, run_agent
from nexus.agent.registration import AgentStartError, credentials_path, load_credentials
from nexus.agent.runtime import AgentRuntime, wait_for
from nexus.core.settings import Settings
from nexus.hostapi.agent_client import AgentClient

from .conftest import SleepDriver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeManager:
    """Just enough of the manager: /v1/hosts/register and heartbeat."""

    def __init__(self) -> None:
        self.registrations: list[dict[str, Any]] = []
        self.register_auth: list[str | None] = []
        self.check_listening = True
        self.heartbeats: list[dict[str, Any]] = []
        self.revoked = False
        self.app = FastAPI()

        @self.app.post("/v1/hosts/register")
        async def register(body: dict[str, Any], request: Request) -> dict[str, str]:
            if body["join_token"] != "join-ok":
                raise HTTPException(403, "bad join token")
            # the agent's API must already listen: the host is usable once it is registered
            url = urlsplit(body["agent_url"])
            if self.check_listening:
                with socket.create_connection((url.hostname, url.port), timeout=2):
                    pass
            self.registrations.append(body)
            self.register_auth.append(request.headers.get("authorization"))
            return {"host_id": "host_1", "host_token": "host-secret", "agent_token": "agent-secret"}

        @self.app.post("/v1/hosts/{host_id}/heartbeat", status_code=204)
        async def heartbeat(host_id: str, request: Request) -> None:
            assert request.headers["authorization"] == "Bearer host-secret"
            if self.revoked:
                raise HTTPException(401, "invalid host credential")
            self.heartbeats.append(await request.json())


@pytest.fixture
async def manager() -> Any:
    fm = FakeManager()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fm.app, port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    fm.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield fm
    server.should_exit = True
    await task


async def test_register_serve_heartbeat_and_restart(manager: FakeManager, tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path / "state", agent_port=free_port(), heartbeat_interval_s=0.1
    )
    url = manager.url  # type: ignore[attr-defined]
    for attempt in range(2):
        started = asyncio.Event()
        rt = AgentRuntime(settings, driver=SleepDriver())
        task = asyncio.create_task(
            run_agent(settings, url, "join-ok", embedded=True, runtime=rt, started=started)
        )
        await asyncio.wait_for(started.wait(), 10)
        creds = load_credentials(settings)
        assert creds is not None and creds.agent_token == "agent-secret"
        assert stat.S_IMODE(credentials_path(settings).stat().st_mode) == 0o600
        async with AgentClient(f"http://127.0.0.1:{settings.agent_port}", "agent-secret") as c:
            assert (await c.info()).driver == "sleep"
        want = 2 * attempt + 1
        assert await wait_for(lambda: len(manager.heartbeats) > want, 5)  # noqa: B023
        assert manager.heartbeats[-1]["facts"]["driver"] == "sleep"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(manager.registrations) == 1  # the restart reused stored credentials
    reg = manager.registrations[0]
    assert reg["agent_url"] == f"http://127.0.0.1:{settings.agent_port}"
    assert reg["facts"]["vcpus"] >= 1


async def test_a_revoked_host_credential_is_reported_once_with_the_way_back(
    manager: FakeManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus.agent")
    settings = Settings(
        state_dir=tmp_path / "state", agent_port=free_port(), heartbeat_interval_s=0.05
    )
    started = asyncio.Event()
    rt = AgentRuntime(settings, driver=SleepDriver())
    task = asyncio.create_task(
        run_agent(settings, manager.url, "join-ok", embedded=True, runtime=rt, started=started)  # type: ignore[attr-defined]
    )
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert await wait_for(lambda: len(manager.heartbeats) >= 1, 5)
        manager.revoked = True
        await asyncio.sleep(0.5)  # ~10 refused heartbeats
        errors = [r for r in caplog.records if "refuses this host's credential" in r.message]
        assert len(errors) == 1 and str(credentials_path(settings)) in errors[0].message
        assert "--join-token" in errors[0].message
        manager.revoked = False
        n = len(manager.heartbeats)
        assert await wait_for(lambda: len(manager.heartbeats) > n, 5)
        assert any("accepts this host's credential again" in r.message for r in caplog.records)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_bad_join_token_and_missing_token(manager: FakeManager, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", agent_port=free_port())
    url = manager.url  # type: ignore[attr-defined]
    with pytest.raises(AgentStartError, match="refused"):
        await run_agent(settings, url, "wrong", runtime=AgentRuntime(settings, SleepDriver()))
    with pytest.raises(AgentStartError, match="join-token"):
        await run_agent(settings, url, None, runtime=AgentRuntime(settings, SleepDriver()))


def test_main_requires_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_STATE_DIR", str(tmp_path))
    with pytest.raises(SystemExit):
        main([])
