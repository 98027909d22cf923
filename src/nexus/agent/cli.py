"""``nexus-agent``: register with the manager, serve the agent API, send heartbeats.

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
import json
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import uvicorn

from nexus.agent.app import create_app
from nexus.agent.managerlink import (
    ManagerUrlError,
    check_manager_url,
    manager_client,
    manager_verify,
)
from nexus.agent.runtime import AgentRuntime
from nexus.agent.schemas import Heartbeat, RegisterRequest, RegisterResponse
from nexus.core.settings import Settings, SettingsError, load_settings
from nexus.core.tls import TlsConfigError, leaf_sha256, server_tls_files

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
    agent_url: str | None = None
    """The agent URL registered (None: stored by an older version)."""
    agent_cert_sha256: str | None = None
    """The certificate pin registered (None: plain http)."""


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
    """The URL the manager uses to reach this agent (https when the agent has a certificate)."""
    host = settings.agent_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert_file else "http"
    return f"{scheme}://{host}:{settings.agent_port}"


def agent_cert_sha256(settings: Settings) -> str | None:
    """The pin of the agent API's certificate (SHA-256 of the leaf's DER), None without TLS."""
    return leaf_sha256(settings.tls_cert_file) if settings.tls_cert_file else None


def registration_outdated(settings: Settings, creds: Credentials) -> str | None:
    """Why stored credentials no longer fit this agent (its certificate changed since it
    registered: the manager would refuse it), or None. A changed agent URL is only logged
    (a host name that changes on reboot must not keep the agent down)."""
    url = agent_url(settings)
    if creds.agent_url is not None and creds.agent_url != url:
        log.warning(
            "this agent registered as %s but now serves %s; the manager still calls the old "
            "URL until the agent registers again (start once with --join-token)",
            creds.agent_url,
            url,
        )
    pin = agent_cert_sha256(settings)
    if pin != creds.agent_cert_sha256:
        return (
            f"the agent's certificate changed (sha256 {pin or 'none: plain http'}, registered "
            f"{creds.agent_cert_sha256 or 'none: plain http'})"
        )
    return None


async def register(
    settings: Settings,
    runtime: AgentRuntime,
    manager_url: str,
    join_token: str,
    *,
    retry_for_s: float = 300.0,
    previous: Credentials | None = None,
) -> Credentials:
    """Register with the manager (retrying while it is unreachable) and store credentials.

    ``previous``: the stored credentials of an earlier registration; their host token is
    presented (``Authorization: Bearer``) so the manager lets this host replace its entry."""
    req = RegisterRequest(
        join_token=join_token,
        name=settings.agent_name or socket.gethostname(),
        agent_url=agent_url(settings),
        facts=runtime.facts(),
        agent_cert_sha256=agent_cert_sha256(settings),
    )
    headers = {"Authorization": f"Bearer {previous.host_token}"} if previous else {}
    deadline = time.monotonic() + retry_for_s
    delay = 0.2
    async with manager_client(settings, manager_url, timeout=30.0) as http:
        while True:
            try:
                resp = await http.post(
                    "/v1/hosts/register", json=req.model_dump(mode="json"), headers=headers
                )
            except httpx.HTTPError as exc:
                resp = None
                err = str(exc)
            if resp is not None and resp.status_code < 300:
                body = RegisterResponse.model_validate(resp.json())
                creds = Credentials(
                    manager_url,
                    body.host_id,
                    body.host_token,
                    body.agent_token,
                    time.time(),
                    req.agent_url,
                    req.agent_cert_sha256,
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
    async with manager_client(settings, creds.manager_url, timeout=10.0) as http:
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
