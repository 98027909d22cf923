"""``nexus-agent``: the agent daemon — serve the agent API, register with the manager and
send heartbeats (:mod:`nexus.agent.registration`).

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
import logging
import os
import sys
from collections.abc import Generator

import uvicorn

from nexus.agent.api.app import create_app
from nexus.agent.registration import (
    AgentStartError,
    credentials_path,
    heartbeat_loop,
    load_credentials,
    register,
)
from nexus.agent.runtime import AgentRuntime
from nexus.core.settings import Settings, SettingsError, load_settings

log = logging.getLogger("nexus.agent")


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
