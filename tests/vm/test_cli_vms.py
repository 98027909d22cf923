"""The real `nexus` command against a real all-in-one manager with real guests: login,
token, template -> `vm create --from-template`, list as table and JSON, console, error
paths, delete. (Exec and `vm ssh` in a pseudo-terminal: tests/vm/test_guest_api.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import BIN, LiveServer, free_port, start_manager

from .conftest import qemu_pids_under

pytestmark = pytest.mark.vm
PW = "cli-vm-admin-pw"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    state = tmp_path_factory.mktemp("cli") / "state"
    server = start_manager(
        state,
        admin_password=PW,
        env={"NEXUS_EMBEDDED_AGENT": "true", "NEXUS_AGENT_PORT": str(free_port())},
        timeout=120,
    )
    try:
        yield server
    finally:
        server.stop()
        for pid in qemu_pids_under(state):
            os.kill(pid, signal.SIGKILL)


def nexus(cfg: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    full = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    full |= {"NEXUS_CONFIG_DIR": str(cfg), "COLUMNS": "200"} | (env or {})
    return subprocess.run(
        [str(BIN / "nexus"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full,
        timeout=600,
    )


def test_cli_drives_vms_end_to_end(srv: LiveServer, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    r = nexus(cfg, "login", "--url", srv.url, "--username", "admin", "--password-stdin", stdin=PW)
    assert r.returncode == 0, r.stderr
    r = nexus(cfg, "-q", "auth", "token", "create", "ci", "--scope", "read")
    assert r.returncode == 0 and r.stdout.strip().startswith("nxs_"), r.stderr
    ro_token = r.stdout.strip()

    r = nexus(cfg, "image", "build", "test")
    assert r.returncode == 0, r.stderr
    r = nexus(cfg, "template", "create", "tiny", "--image", "test", "--memory", "128", "-l", "t=1")
    assert r.returncode == 0, r.stderr
    r = nexus(cfg, "vm", "create", "from-tpl", "--from-template", "tiny")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "running" in r.stdout

    r = nexus(cfg, "vm", "list")
    assert r.returncode == 0 and "from-tpl" in r.stdout and "running" in r.stdout
    r = nexus(cfg, "-o", "json", "vm", "list")
    vms = json.loads(r.stdout)
    assert [v["name"] for v in vms] == ["from-tpl"] and vms[0]["memory_mib"] == 128
    assert vms[0]["labels"] == {"t": "1", "nexus.template": "tiny"}

    r = nexus(cfg, "vm", "console", "from-tpl", "--tail", "50")
    assert r.returncode == 0 and "NEXUS-GUEST-BOOTED" in r.stdout

    # error paths: one line with the server's detail and the request id, exit 1, no traceback
    r = nexus(cfg, "vm", "get", "vm_doesnotexist")
    assert r.returncode == 1 and "not found" in r.stderr and "Traceback" not in r.stderr
    assert "request" in r.stderr.lower()
    r = nexus(cfg, "vm", "stop", "from-tpl", env={"NEXUS_TOKEN": ro_token, "NEXUS_URL": srv.url})
    assert r.returncode == 1 and "read scope" in r.stderr
    r = nexus(cfg, "vm", "create")
    assert r.returncode == 2

    r = nexus(cfg, "vm", "delete", "from-tpl", "--yes")
    assert r.returncode == 0, r.stderr
    r = nexus(cfg, "-o", "json", "vm", "list")
    assert json.loads(r.stdout) == []
