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

from nexus.core.files import ensure_private_dir, write_json_atomic
from nexus.core.settings import Settings
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
    """The URL the manager uses to reach this agent."""
    host = settings.agent_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"http://{host}:{settings.agent_port}"


async def register(
    settings: Settings,
    runtime: FactSource,
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


async def heartbeat_loop(settings: Settings, runtime: FactSource, creds: Credentials) -> None:
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
