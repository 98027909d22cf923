"""Registration with the manager and heartbeats, and the per-host credentials they use.

The first start registers (``POST {manager}/v1/hosts/register`` with a join token) and
stores the credentials in ``<state_dir>/agent/credentials.json`` (0600); later starts reuse
them. Heartbeats carry the host facts and the actual state of every VM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import httpx

from nexus.agent import metrics as observability
from nexus.agent.managerlink import manager_client
from nexus.core.files import ensure_private_dir, write_json_atomic
from nexus.core.settings import Settings
from nexus.core.tls import leaf_sha256
from nexus.hostapi.models import Heartbeat, HostFacts, RegisterRequest, RegisterResponse, VmStatus

log = logging.getLogger("nexus.agent")


class FactSource(Protocol):
    """What registration and heartbeats report (the agent runtime)."""

    def facts(self) -> HostFacts:
        """The host facts."""
        ...

    def list(self) -> list[VmStatus]:
        """Every VM's actual state."""
        ...


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
    ensure_private_dir(path.parent)
    write_json_atomic(path, asdict(creds), mode=0o600)


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
    runtime: FactSource,
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


async def heartbeat_loop(settings: Settings, runtime: FactSource, creds: Credentials) -> None:
    """Send facts + VM states every ``heartbeat_interval_s`` until cancelled."""
    url = f"/v1/hosts/{creds.host_id}/heartbeat"
    headers = {"Authorization": f"Bearer {creds.host_token}"}
    refused = False
    async with manager_client(settings, creds.manager_url, timeout=10.0) as http:
        while True:
            beat = Heartbeat(facts=runtime.facts(), vms=runtime.list())
            began = time.perf_counter()
            try:
                resp = await http.post(url, json=beat.model_dump(mode="json"), headers=headers)
                if resp.status_code < 300:
                    observability.heartbeat_ok(time.perf_counter() - began)
                else:
                    observability.heartbeat_failed()
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
                observability.heartbeat_failed()
                log.warning("heartbeat failed: %s", exc)
            await _until_due(settings.heartbeat_interval_s, runtime, _signature(beat.vms))


STATE_CHECK_S = 1.0
"""How often the heartbeat loop looks for a VM state change to report at once."""


def _signature(vms: list[VmStatus]) -> list[tuple[str, str, bool, str | None]]:
    return [(v.id, v.state, v.guest_ready, v.guest_channel_error) for v in vms]


async def _until_due(interval_s: float, runtime: FactSource, sent: object) -> None:
    """Sleep until the next heartbeat is due, or until a VM's state differs from what the
    last heartbeat said (a VM started, stopped, crashed, appeared or went): the manager's
    reconciler trusts a heartbeat that agrees with its rows, so changes are sent at once."""
    loop = asyncio.get_running_loop()
    due = loop.time() + interval_s
    while (left := due - loop.time()) > 0:
        await asyncio.sleep(min(STATE_CHECK_S, left))
        if _signature(runtime.list()) != sent:
            return
