"""Fixtures: the REAL guest agent in a subprocess, listening on a unix socket."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nexus.guest.client import GuestClient

SRC = Path(__file__).resolve().parents[3] / "src"
GUEST_DIR = SRC / "nexus" / "guest"
#: Modules of ``nexus.guest`` that only the host imports (images carry them, unused).
HOST_ONLY = frozenset({"client.py"})
#: Every module the guest agent may run: the whole package but the host-only ones, found on
#: disk so that a module added later is checked without anyone editing a list.
GUEST_MODULES = tuple(sorted(p.name for p in GUEST_DIR.glob("*.py") if p.name not in HOST_ONLY))
#: The agent's modules by concern (the split of issue 13); all must be among GUEST_MODULES.
AGENT_MODULES = frozenset(
    {
        "__init__.py",
        "agent.py",
        "channel.py",
        "common.py",
        "ops.py",
        "protocol.py",
        "sessions.py",
        "shells.py",
        "streams.py",
    }
)


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an agent subprocess: only the guest package on the path."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(SRC)}
    env.update(extra or {})
    return env


def start_agent(
    sock: Path,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    python_flags: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start ``python -m nexus.guest.agent --listen-unix sock`` and wait for the marker."""
    proc = subprocess.Popen(
        [
            python,
            *python_flags,
            "-m",
            "nexus.guest.agent",
            "--listen-unix",
            str(sock),
            "--ready-to",
            "-",
            # never touch the clock or credit entropy of the machine running the tests
            "--no-set-clock",
            "--no-credit-entropy",
            "--no-set-identity",
        ],
        env=env or agent_env(),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(b"NEXUS-GUEST-READY"), line
    return proc


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    """Terminate an agent subprocess."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """One running agent per test module: (process, socket path)."""
    sock = tmp_path_factory.mktemp("guest") / "agent.sock"
    proc = start_agent(sock)
    yield proc, sock
    stop_agent(proc)


@pytest.fixture
async def client(agent: tuple[subprocess.Popen[bytes], Path]) -> AsyncIterator[GuestClient]:
    """A connected client that has done the handshake."""
    c = await GuestClient.connect(str(agent[1]), timeout=5)
    await c.hello()
    yield c
    await c.close()
