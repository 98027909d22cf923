"""Throwaway network namespaces for the host-networking tests.

Each test gets a "host" namespace (where Nexus bridges, taps and the nftables table live)
and can add "guest" namespaces joined to a bridge by a veth pair (a stand-in for a tap
with a VM behind it) and an "outside" namespace behind an uplink veth (a stand-in for
the LAN). Everything is deleted afterwards, also when the test fails. Nothing is ever
created in, or sent from, the machine's own namespace.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.agent.net import HostNetwork

TEST_TABLE = "nexus_test"
_counter = itertools.count()


def _run(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def ns_run(ns: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a command in ``ns``; returns the completed process (rc not checked)."""
    return _run("ip", "netns", "exec", ns, *argv, check=False, timeout=timeout)


def ping(ns: str, ip: str) -> bool:
    return ns_run(ns, "busybox", "ping", "-c1", "-W1", ip).returncode == 0


_GET = (
    "import sys, urllib.request\n"
    "print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode(), end='')"
)


def http_get(ns: str, url: str, timeout_s: float = 2) -> str | None:
    """Body of ``url`` fetched from ``ns``, or None on failure.

    (busybox-static's wget segfaults on this Debian build, so the client is python3.)
    """
    p = ns_run(ns, "python3", "-c", _GET, url, str(timeout_s), timeout=15)
    return p.stdout if p.returncode == 0 else None


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft", "busybox"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


class Lab:
    """Namespaces, veths and server processes of one test; ``close()`` removes them."""

    def __init__(self, tmp: Path) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.tmp = tmp
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.host = self.add_ns("h")

    def add_ns(self, role: str) -> str:
        name = f"nxt-{self.tag}-{role}{next(_counter)}"
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def add_guest(self, bridge: str, cidr_ip: str, gateway: str) -> str:
        """A guest namespace with ``eth0`` = ``cidr_ip``, its veth peer on ``bridge``."""
        g = self.add_ns("g")
        port = f"nxv{self.tag[:4]}{next(_counter)}"
        _run(
            "ip",
            "-n",
            self.host,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            g,
        )
        _run("ip", "-n", self.host, "link", "set", port, "master", bridge, "up")
        _run("ip", "-n", g, "addr", "add", cidr_ip, "dev", "eth0")
        _run("ip", "-n", g, "link", "set", "eth0", "up")
        _run("ip", "-n", g, "route", "add", "default", "via", gateway)
        return g

    def add_outside(self, host_ip: str = "192.0.2.1", out_ip: str = "192.0.2.2") -> str:
        """An "outside" namespace on an uplink veth (/24) with NO route to guest networks."""
        o = self.add_ns("o")
        _run(
            "ip",
            "-n",
            self.host,
            "link",
            "add",
            "uplink0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            o,
        )
        _run("ip", "-n", self.host, "addr", "add", f"{host_ip}/24", "dev", "uplink0")
        _run("ip", "-n", self.host, "link", "set", "uplink0", "up")
        _run("ip", "-n", o, "addr", "add", f"{out_ip}/24", "dev", "eth0")
        _run("ip", "-n", o, "link", "set", "eth0", "up")
        return o

    def http_server(self, ns: str, port: int, body: str, bind: str = "0.0.0.0") -> None:
        """A python http.server in ``ns`` serving ``/index.txt`` = ``body``; waits until up."""
        root = self.tmp / f"www{next(_counter)}"
        root.mkdir()
        (root / "index.txt").write_text(body)
        p = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "python3",
                "-m",
                "http.server",
                str(port),
                "--bind",
                bind,
                "--directory",
                str(root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(p)
        probe = "127.0.0.1" if bind == "0.0.0.0" else bind
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if http_get(ns, f"http://{probe}:{port}/index.txt", 1) == body:
                return
            time.sleep(0.1)
        raise RuntimeError(f"http server in {ns}:{port} did not start")

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in reversed(self.namespaces):
            _run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    reason = _can_run()
    if reason:
        pytest.skip(reason)
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def hn(lab: Lab) -> Iterator[HostNetwork]:
    """Nexus host networking inside the lab's host namespace."""
    h = HostNetwork(lab.host, table=TEST_TABLE, protected_host_ports=(8080, 8081))
    try:
        yield h
    finally:
        h.cleanup_all()
