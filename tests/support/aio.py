"""An all-in-one manager for the real-guest tests (tests/vm, tests/browser): a manager with the
embedded agent on a free port, one image built (the image cache makes a rebuild quick), and on
the way out no QEMU left under its state directory."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.server import LiveServer, free_port, login, start_manager, wait_op


@dataclass
class AllInOne:
    srv: LiveServer
    h: dict[str, str]  # the admin's Authorization header
    image_id: str  # the image built at start ("" when none was asked for)
    state_dir: Path


def qemu_pids_under(path: Path) -> list[int]:
    """PIDs of QEMU processes whose command line mentions ``path``."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmd and "qemu-system" in cmd:
                pids.append(int(p.name))
    return pids


def build_image(srv: LiveServer, h: dict[str, str], name: str) -> str:
    """``POST /v1/images/build`` of a built-in image, waited for; its id."""
    r = httpx.post(f"{srv.url}/v1/images/build", json={"name": name}, headers=h)
    assert r.status_code == 202, r.text
    op = wait_op(srv, h, r.json())
    assert op["status"] == "succeeded", op
    return str(op["result"]["image_id"])


@contextmanager
def all_in_one(
    state_dir: Path,
    *,
    admin_password: str,
    env: dict[str, str] | None = None,
    image: str | None = "default",
) -> Iterator[AllInOne]:
    """A running all-in-one manager with ``image`` built (``None``: none); ``env`` adds to or
    overrides its environment."""
    srv = start_manager(
        state_dir,
        admin_password=admin_password,
        env={"NEXUS_EMBEDDED_AGENT": "true", "NEXUS_AGENT_PORT": str(free_port()), **(env or {})},
        timeout=120,
    )
    try:
        h = login(srv, admin_password)
        yield AllInOne(srv, h, build_image(srv, h, image) if image else "", state_dir)
    finally:
        srv.stop()
        for pid in qemu_pids_under(state_dir):
            os.kill(pid, signal.SIGKILL)
