"""Start a real ``nexus-manager serve`` subprocess on a free loopback port (for tests that need
a live server: schemathesis, the CLI)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A running manager."""

    url: str
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_manager(
    state_dir: Path,
    *,
    admin_password: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    verify: str | None = None,
) -> LiveServer:
    """Start the manager and wait until /health/ready answers 200. ``verify``: a CA file —
    the manager serves HTTPS (pass ``NEXUS_TLS_CERT_FILE``/``KEY_FILE`` in ``env``)."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    full_env.update(
        {
            "NEXUS_STATE_DIR": str(state_dir),
            "NEXUS_CACHE_DIR": os.environ.get("NEXUS_TEST_CACHE_DIR", "/var/cache/nexus-test"),
            "NEXUS_BOOTSTRAP_ADMIN_PASSWORD": admin_password,
            "NEXUS_EMBEDDED_AGENT": "false",
            "NEXUS_LOG_LEVEL": "warning",
        }
    )
    db = os.environ.get("NEXUS_TEST_DATABASE_URL")
    if db:
        full_env["NEXUS_DATABASE_URL"] = db
    full_env.update(env or {})
    log_path = state_dir / "manager.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(BIN / "nexus-manager"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"{'https' if verify else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"manager exited early:\n{log_path.read_text()[-3000:]}")
        try:
            r = httpx.get(f"{url}/health/ready", timeout=2, verify=verify or True)
            if r.status_code == 200:
                return LiveServer(url, proc, state_dir, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"manager not ready in {timeout}s:\n{log_path.read_text()[-3000:]}")


def login(srv: LiveServer, password: str, username: str = "admin") -> dict[str, str]:
    """Log in and return the Authorization header."""
    r = httpx.post(f"{srv.url}/v1/auth/login", json={"username": username, "password": password})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def wait_op(srv: LiveServer, h: dict[str, str], op: dict[str, Any], timeout: float = 900) -> Any:
    """Wait for an operation (``GET /v1/operations/{id}?wait=true``) and return it."""
    r = httpx.get(
        f"{srv.url}/v1/operations/{op['id']}?wait=true&timeout={timeout}",
        headers=h,
        timeout=timeout + 10,
    )
    r.raise_for_status()
    return r.json()
