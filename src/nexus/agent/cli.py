"""``nexus-agent``: register with the manager, serve the agent API, send heartbeats.

Usage::

    nexus-agent --manager http://manager:8080 --join-token T [--config agent.toml]

The first start registers (``POST {manager}/v1/hosts/register``) and stores the per-host
credentials in ``<state_dir>/agent/credentials.json`` (mode 0600); later starts reuse them
and skip registration. VMs that kept running while the agent was down are re-adopted.

The all-in-one manager runs the same code in-process: ``await run_embedded(settings,
manager_url, join_token)`` (an asyncio task; cancel it to stop the agent — VMs keep
running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import uvicorn

from nexus.agent.app import create_app
from nexus.agent.runtime import AgentRuntime
from nexus.core.settings import Settings, SettingsError, load_settings
from nexus.hostapi.models import Heartbeat, RegisterRequest, RegisterResponse

log = logging.getLogger("nexus.agent")


class AgentStartError(Exception):
    """The agent cannot start (no credentials and no join token, rejected join token...)."""


@dataclass
class Credentials:
    """Per-host secrets obtained at registration."""

    manager_url: str
    host_id: str
    host_token: str
    agent_token: str
    registered_at: float = 0.0


def credentials_path(settings: Settings) -> Path:
    """``<state_dir>/agent/credentials.json``."""
    return Path(settings.state_dir) / "agent" / "credentials.json"


def load_credentials(settings: Settings) -> Credentials | None:
    """Stored credentials, or None."""
    try:
        data = json.loads(credentials_path(settings).read_text())
        return Credentials(**data)
    except (OSError, ValueError, TypeError):
        return None


def save_credentials(settings: Settings, creds: Credentials) -> None:
    """Write credentials with mode 0600 (directory 0700)."""
    path = credentials_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(".credentials.json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(creds), fh, indent=2)
    os.replace(tmp, path)


def agent_url(settings: Settings) -> str:
    """The URL the manager uses to reach this agent."""
    host = settings.agent_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"http://{host}:{settings.agent_port}"


async def register(
    settings: Settings,
    runtime: AgentRuntime,
    manager_url: str,
    join_token: str,
    *,
    retry_for_s: float = 300.0,
) -> Credentials:
    """Register with the manager (retrying while it is unreachable) and store credentials."""
    req = RegisterRequest(
        join_token=join_token,
        name=settings.agent_name or socket.gethostname(),
        agent_url=agent_url(settings),
        facts=runtime.facts(),
    )
    deadline = time.monotonic() + retry_for_s
    delay = 0.2
    async with httpx.AsyncClient(base_url=manager_url.rstrip("/"), timeout=30.0) as http:
        while True:
            try:
                resp = await http.post("/v1/hosts/register", json=req.model_dump(mode="json"))
            except httpx.HTTPError as exc:
                resp = None
                err = str(exc)
            if resp is not None and resp.status_code < 300:
                body = RegisterResponse.model_validate(resp.json())
                creds = Credentials(
                    manager_url, body.host_id, body.host_token, body.agent_token, time.time()
                )
                save_credentials(settings, creds)
                log.info("registered with %s as host %s", manager_url, body.host_id)
                return creds
            if resp is not None and 400 <= resp.status_code < 500 and resp.status_code != 429:
                raise AgentStartError(
                    f"manager refused registration ({resp.status_code}): {resp.text[:300]}"
                )
            if resp is not None:
                err = f"HTTP {resp.status_code}"
            if time.monotonic() > deadline:
                raise AgentStartError(f"cannot register with {manager_url}: {err}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def heartbeat_loop(settings: Settings, runtime: AgentRuntime, creds: Credentials) -> None:
    """Send facts + VM states every ``heartbeat_interval_s`` until cancelled."""
    url = f"/v1/hosts/{creds.host_id}/heartbeat"
    headers = {"Authorization": f"Bearer {creds.host_token}"}
    refused = False
    async with httpx.AsyncClient(base_url=creds.manager_url.rstrip("/"), timeout=10.0) as http:
        while True:
            beat = Heartbeat(facts=runtime.facts(), vms=runtime.list())
            try:
                resp = await http.post(url, json=beat.model_dump(mode="json"), headers=headers)
                if resp.status_code == 401:
                    if not refused:  # say it once, plainly; keep trying (VMs keep running)
                        log.error(
                            "the manager refuses this host's credential (host %s deleted or "
                            "its token revoked); to join again remove %s and start once with "
                            "--join-token <new token from POST /v1/hosts/join-tokens>",
                            creds.host_id,
                            credentials_path(settings),
                        )
                    refused = True
                elif resp.status_code >= 300:
                    log.warning("heartbeat rejected: HTTP %s %s", resp.status_code, resp.text[:200])
                elif refused:
                    log.info("the manager accepts this host's credential again")
                    refused = False
            except httpx.HTTPError as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(settings.heartbeat_interval_s)


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def run_agent(
    settings: Settings,
    manager_url: str,
    join_token: str | None = None,
    *,
    embedded: bool = False,
    runtime: AgentRuntime | None = None,
    started: asyncio.Event | None = None,
) -> None:
    """Run the agent until cancelled (or until SIGINT/SIGTERM when not embedded).

    Order: runtime start-up (re-adoption) -> HTTP API on ``agent_host:agent_port`` (it
    refuses every call until the agent token is known) -> registration unless credentials
    are stored -> heartbeats. The API listens before the host registers, so a manager that
    sees the host healthy can use it at once. ``started`` is set once the API listens and
    the agent is registered. On exit the API stops and VMs keep running.
    """
    runtime = runtime or AgentRuntime(settings)
    await runtime.startup()
    heartbeat: asyncio.Task[None] | None = None
    serve: asyncio.Task[None] | None = None
    server: uvicorn.Server | None = None
    try:
        creds = load_credentials(settings)
        must_register = creds is None or creds.manager_url.rstrip("/") != manager_url.rstrip("/")
        if must_register and not join_token:
            raise AgentStartError(
                f"no stored credentials in {credentials_path(settings)}: pass --join-token"
            )
        # "" until registered: the API's auth refuses every call while it is empty
        token = {"agent": "" if must_register or not creds else creds.agent_token}
        app = create_app(runtime, lambda: token["agent"])
        config = uvicorn.Config(
            app,
            host=settings.agent_host,
            port=settings.agent_port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        server = _EmbeddedServer(config) if embedded else uvicorn.Server(config)
        serve = asyncio.create_task(server.serve())
        while not server.started and not serve.done():
            await asyncio.sleep(0.02)
        if not server.started:
            raise AgentStartError(
                f"agent API could not listen on {settings.agent_host}:{settings.agent_port}"
            )
        if must_register:
            assert join_token is not None
            creds = await register(
                settings,
                runtime,
                manager_url,
                join_token,
                retry_for_s=float("inf") if embedded else 300.0,
            )
        assert creds is not None
        token["agent"] = creds.agent_token
        heartbeat = asyncio.create_task(heartbeat_loop(settings, runtime, creds))
        if started is not None:
            started.set()
        await asyncio.shield(serve)
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heartbeat
        if server is not None and serve is not None and not serve.done():
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(serve, 10.0)
        await runtime.shutdown()


async def run_embedded(settings: Settings, manager_url: str, join_token: str) -> None:
    """Run the agent inside the manager's event loop (all-in-one mode) until cancelled.

    Usage from the manager lifespan::

        task = asyncio.create_task(run_embedded(settings, settings.resolved_public_url(), tok))
        ...
        task.cancel()

    Registration retries until the manager's API answers, so it may be started before
    the manager listens.
    """
    await run_agent(settings, manager_url, join_token, embedded=True)


def main(argv: list[str] | None = None) -> int:
    """Console script entry point of ``nexus-agent``."""
    os.umask(0o077)  # everything the agent creates (state, disks, tokens) is private to root
    parser = argparse.ArgumentParser(
        prog="nexus-agent",
        description="Nexus host agent: runs microVMs for the manager.",
        epilog="Example: nexus-agent --manager http://10.0.0.1:8080 --join-token nxj_...",
    )
    parser.add_argument(
        "--manager",
        default=os.environ.get("NEXUS_MANAGER_URL"),
        help="manager base URL (env NEXUS_MANAGER_URL)",
    )
    parser.add_argument(
        "--join-token",
        default=os.environ.get("NEXUS_JOIN_TOKEN"),
        help="one-time join token (only needed for the first start)",
    )
    parser.add_argument("--config", help="TOML settings file (also NEXUS_CONFIG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # NEXUS_MANAGER_URL / NEXUS_JOIN_TOKEN are CLI inputs, not settings keys.
    for key in ("NEXUS_MANAGER_URL", "NEXUS_JOIN_TOKEN"):
        os.environ.pop(key, None)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"nexus-agent: {exc}", file=sys.stderr)
        return 2
    manager = args.manager
    if not manager:
        creds = load_credentials(settings)
        if creds is None:
            parser.error("--manager is required for the first start")
        manager = creds.manager_url
    try:
        asyncio.run(run_agent(settings, manager, args.join_token))
    except AgentStartError as exc:
        print(f"nexus-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
