"""Fixtures for the CLI and SDK tests: a REAL manager process and the REAL ``nexus`` script.

The manager runs once per session (``nexus-manager serve`` on a free port, temp state dir,
no embedded agent). Each test gets its own CLI config directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from nexus.client import Client

VENV_BIN = Path(sys.executable).parent
NEXUS = str(VENV_BIN / "nexus")
MANAGER = str(VENV_BIN / "nexus-manager")
ADMIN_PASSWORD = "adminpass123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def manager_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running manager; its URL."""
    state = tmp_path_factory.mktemp("manager-state")
    port = free_port()
    env = {
        **os.environ,
        "NEXUS_STATE_DIR": str(state),
        "NEXUS_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "NEXUS_EMBEDDED_AGENT": "false",
        "NEXUS_RATE_LIMIT_AUTH": "10000/minute",
        "NEXUS_RATE_LIMIT_CREATE": "10000/minute",
        "NEXUS_LOG_LEVEL": "warning",
    }
    log = (state / "manager.log").open("w")
    proc = subprocess.Popen(
        [MANAGER, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"manager exited ({proc.returncode}): {(state / 'manager.log').read_text()}"
                )
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("manager did not become ready in 30 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Result:
    """A finished ``nexus`` invocation."""

    code: int
    out: str
    err: str


Runner = Callable[..., Result]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "nexus-config"
    return d


@pytest.fixture
def nexus(config_dir: Path) -> Runner:
    """Run the real console script: ``nexus("user", "list", input=..., env={...})``."""

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NEXUS_URL", "NEXUS_TOKEN", "NEXUS_CONTEXT", "NEXUS_CLI_CONFIG")
        }
        full_env.update({"NEXUS_CONFIG_DIR": str(config_dir), "COLUMNS": "200"})
        full_env.update(env or {})
        proc = subprocess.run(
            [NEXUS, *args],
            input=input,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=60,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def logged_in(nexus: Runner, manager_url: str, config_dir: Path) -> Runner:
    """``nexus`` with the admin logged in on context 'default'.

    The session is made with the SDK and written in the CLI's config format (faster than one
    more subprocess per test); ``test_login_*`` covers the real ``nexus login``.
    """
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        access, refresh = c.token, c.refresh_token
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "config.toml"
    path.write_text(
        'current_context = "default"\n\n[contexts.default]\n'
        f'url = "{manager_url}"\naccess_token = "{access}"\nrefresh_token = "{refresh}"\n'
        'username = "admin"\n'
    )
    path.chmod(0o600)
    return nexus
