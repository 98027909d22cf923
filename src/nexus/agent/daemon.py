"""``nexus-agent``: the agent daemon — serve the agent API, register with the manager and
send heartbeats (:mod:`nexus.agent.registration`).

Usage::

    nexus-agent --manager https://manager:8080 --join-token T [--config agent.toml]

The first start registers (``POST {manager}/v1/hosts/register``) and stores the per-host
credentials in ``<state_dir>/agent/credentials.json`` (mode 0600); later starts reuse them
and skip registration. VMs that kept running while the agent was down are re-adopted.

TLS: with ``tls_cert_file``/``tls_key_file`` the agent API serves HTTPS and the agent
registers the SHA-256 of its certificate, which the manager pins. When the certificate
changes, the agent must register again: start it once with a new ``--join-token``; it
presents its stored host token, which lets it replace its own host entry. How the agent
trusts the manager: :mod:`nexus.agent.managerlink`.

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
import ssl
import sys
from collections.abc import Generator

import uvicorn

from nexus.agent.api.app import create_app
from nexus.agent.managerlink import (
    ManagerUrlError,
    check_manager_url,
    manager_verify,
)
from nexus.agent.registration import (
    AgentStartError,
    credentials_path,
    heartbeat_loop,
    load_credentials,
    register,
    registration_outdated,
)
from nexus.agent.runtime import AgentRuntime
from nexus.core.settings import Settings, SettingsError, load_settings
from nexus.core.tls import TlsConfigError, leaf_sha256, server_tls_files

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

    Refused at once (:class:`AgentStartError`): a plain-http manager off loopback without
    the ``insecure`` setting (not checked for the embedded agent, which talks to its own
    process), TLS files that do not work, and re-registration without a join token.
    """
    try:
        if not embedded:
            check_manager_url(manager_url, insecure=settings.insecure)
        tls = server_tls_files(settings.tls_cert_file, settings.tls_key_file)
        manager_verify(settings, manager_url)  # a tls_ca_file that does not load stops here
    except (ManagerUrlError, TlsConfigError) as exc:
        raise AgentStartError(str(exc)) from exc
    except (OSError, ssl.SSLError) as exc:
        ca = settings.tls_ca_file
        raise AgentStartError(f"tls_ca_file {ca}: cannot load it ({exc})") from exc
    runtime = runtime or AgentRuntime(settings)
    await runtime.startup()
    heartbeat: asyncio.Task[None] | None = None
    serve: asyncio.Task[None] | None = None
    server: uvicorn.Server | None = None
    try:
        creds = load_credentials(settings)
        if creds is None:
            why: str | None = f"no stored credentials in {credentials_path(settings)}"
        elif creds.manager_url.rstrip("/") != manager_url.rstrip("/"):
            why = f"the manager URL changed from {creds.manager_url} to {manager_url}"
        else:
            why = registration_outdated(settings, creds)
        must_register = why is not None
        if must_register and not join_token:
            again = "" if creds is None else " (the stored host token lets it replace its entry)"
            raise AgentStartError(
                f"{why}: pass --join-token <new token from 'nexus host join-token'> to "
                f"register{again}"
            )
        if why is not None and creds is not None:
            log.info("registering again: %s", why)
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
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
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
                previous=creds,
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
    the manager listens. An https manager (``tls_cert_file``) is reached with its own
    certificate pinned (a loopback address has no host name to verify), unless
    ``manager_cert_sha256`` is set already.
    """
    if (
        manager_url.startswith("https://")
        and settings.tls_cert_file
        and not settings.manager_cert_sha256
    ):
        pin = leaf_sha256(settings.tls_cert_file)
        settings = settings.model_copy(update={"manager_cert_sha256": pin})
    await run_agent(settings, manager_url, join_token, embedded=True)


def main(argv: list[str] | None = None) -> int:
    """Console script entry point of ``nexus-agent``."""
    os.umask(0o077)  # everything the agent creates (state, disks, tokens) is private to root
    parser = argparse.ArgumentParser(
        prog="nexus-agent",
        description="Nexus host agent: runs microVMs for the manager. With tls_cert_file and "
        "tls_key_file set its API serves HTTPS and the manager pins that certificate.",
        epilog="Example: nexus-agent --manager https://manager.example:8080 --join-token "
        "nxj_... (an https manager is verified against tls_ca_file, or the system CAs, or "
        "pinned with manager_cert_sha256). Security: docs/security.md.",
    )
    parser.add_argument(
        "--manager",
        default=os.environ.get("NEXUS_MANAGER_URL"),
        help="manager base URL, https://... (env NEXUS_MANAGER_URL); plain http:// only on "
        "loopback unless --insecure",
    )
    parser.add_argument(
        "--join-token",
        default=os.environ.get("NEXUS_JOIN_TOKEN"),
        help="one-time join token: needed for the first start, and again to re-register "
        "after the agent's certificate changed",
    )
    parser.add_argument("--config", help="TOML settings file (also NEXUS_CONFIG)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="accept a plain-http manager on a non-loopback address: the host token and "
        "image files cross the network in clear (setting insecure, env NEXUS_INSECURE)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # NEXUS_MANAGER_URL / NEXUS_JOIN_TOKEN are CLI inputs, not settings keys.
    for key in ("NEXUS_MANAGER_URL", "NEXUS_JOIN_TOKEN"):
        os.environ.pop(key, None)
    try:
        settings = load_settings(args.config, insecure=args.insecure)
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
        check_manager_url(manager, insecure=settings.insecure)
    except ManagerUrlError as exc:
        print(f"nexus-agent: {exc}", file=sys.stderr)
        return 2
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
