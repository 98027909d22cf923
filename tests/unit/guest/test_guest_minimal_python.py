"""The guest side must run on Debian bookworm's python3-minimal (libpython3.11-minimal).

That package lacks json, pty, tty, termios, queue, shutil, dataclasses, shlex, ctypes...
A static check pins the agent's imports to modules it does ship; a live check runs the
real agent under the real python3.11-minimal interpreter when Debian's packages can be
fetched with apt-get (skipped otherwise).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.guest.client import GuestClient

from .conftest import AGENT_MODULES, GUEST_MODULES, SRC, agent_env, start_agent, stop_agent

# Verified with `dpkg -c libpython3.11-minimal_3.11.2-6+deb12u*_amd64.deb` and by importing
# each under that interpreter (built-ins included). Extend only after checking the same way.
MINIMAL_MODULES = {
    "__future__",
    "argparse",
    "collections",
    "errno",
    "fcntl",
    "os",
    "select",
    "selectors",
    "signal",
    "socket",
    "struct",
    "subprocess",
    "sys",
    "threading",
    "time",
    "typing",
    "zlib",
}
CACHE = Path(
    os.environ.get("NEXUS_PY_MINIMAL_ROOT", Path(tempfile.gettempdir()) / "nexus-py-minimal")
)


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (anywhere in the file)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_agent_module_is_checked() -> None:
    """The checks below run on every guest module found on disk: at least the agent's."""
    assert AGENT_MODULES <= set(GUEST_MODULES), AGENT_MODULES - set(GUEST_MODULES)


@pytest.mark.parametrize("name", GUEST_MODULES)
def test_guest_files_import_only_python3_minimal_modules(name: str) -> None:
    mods = imported_modules(SRC / "nexus" / "guest" / name)
    assert mods - {"nexus"} <= MINIMAL_MODULES, mods - MINIMAL_MODULES - {"nexus"}


def test_guest_files_import_nothing_from_nexus_outside_guest() -> None:
    for name in GUEST_MODULES:
        tree = ast.parse((SRC / "nexus" / "guest" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("nexus"):
                    assert node.module.startswith("nexus.guest."), (name, node.module)
    init = ast.parse((SRC / "nexus" / "guest" / "__init__.py").read_text())
    assert not [n for n in ast.walk(init) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _fetch_minimal_python() -> Path | None:
    """Extract Debian's python3.11-minimal into CACHE (once); None if impossible."""
    binary = CACHE / "usr" / "bin" / "python3.11"
    if binary.exists():
        return CACHE
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(
                ["apt-get", "download", "libpython3.11-minimal", "python3.11-minimal"],
                cwd=tmp,
                check=True,
                capture_output=True,
                timeout=120,
            )
            CACHE.mkdir(parents=True, exist_ok=True)
            for deb in Path(tmp).glob("*.deb"):
                subprocess.run(["dpkg", "-x", str(deb), str(CACHE)], check=True, timeout=120)
        except (subprocess.SubprocessError, OSError):
            return None
    return CACHE if binary.exists() else None


@pytest.fixture(scope="module")
def minimal_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real agent running under Debian's python3.11-minimal with ``-S`` (no site)."""
    root = _fetch_minimal_python()
    if root is None:
        pytest.skip("Debian's python3.11-minimal could not be fetched with apt-get")
    python = str(root / "usr" / "bin" / "python3.11")
    probe = subprocess.run(
        [python, "-S", "-c", "import json"],
        env={"PYTHONHOME": str(root / "usr")},
        capture_output=True,
    )
    assert probe.returncode != 0, "json importable: not the minimal stdlib"
    sock = tmp_path_factory.mktemp("minimal") / "agent.sock"
    env = agent_env({"PYTHONHOME": str(root / "usr")})
    proc = start_agent(sock, python=python, env=env)
    yield sock
    stop_agent(proc)


async def test_agent_serves_under_python3_minimal(minimal_agent: Path) -> None:
    async with await GuestClient.connect(str(minimal_agent), timeout=5) as c:
        facts = await c.hello()
        assert facts["python"].startswith("3.11.")
        result = await c.exec(["sh", "-c", "echo out; echo err >&2; exit 2"], stdin=b"x")
        assert (result.exit_code, result.stdout, result.stderr) == (2, b"out\n", b"err\n")
        timed = await c.exec(["sleep", "10"], timeout_s=0.5)
        assert timed.timed_out
        shell = await c.open_shell(90, 33, command="stty size; echo $((6*7))")
        out = b"".join([chunk async for chunk in shell])
        assert b"33 90" in out and b"42" in out
        assert (await c.metrics())["mem_total_bytes"] > 0
        assert (await c.reseed(None, b"\x01" * 16))["entropy_bytes"] == 16
        await c.ping()


def test_agent_starts_fast_under_any_python(tmp_path: Path) -> None:
    """Import + argument parsing + listen until the ready marker: well under a second."""
    started = time.monotonic()
    proc = start_agent(tmp_path / "a.sock", python=sys.executable)
    elapsed = time.monotonic() - started
    stop_agent(proc)
    assert elapsed < 2.0, elapsed
