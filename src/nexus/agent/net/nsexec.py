"""Running things in a network namespace (``None`` = the agent's own namespace)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pyroute2 import IPRoute

_NETNS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SYSCTL_RE = re.compile(r"^[A-Za-z0-9_./-]+$")


def check_netns(netns: str | None) -> None:
    """Reject namespace names that are not plain ``ip netns`` names."""
    if netns is not None and not _NETNS_RE.match(netns):
        raise ValueError(f"bad netns name {netns!r}")


def iproute(netns: str | None) -> IPRoute:
    """A netlink socket in ``netns`` (use as a context manager)."""
    return IPRoute(netns=netns) if netns else IPRoute()


def run(
    netns: str | None,
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``netns`` and return the completed process (never raises on rc)."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    return subprocess.run(
        full, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )


def _sysctl_path(key: str) -> str:
    if not _SYSCTL_RE.match(key) or ".." in key:
        raise ValueError(f"bad sysctl key {key!r}")
    return "/proc/sys/" + key


def read_sysctl(netns: str | None, key: str) -> str:
    """Read a sysctl given in path form, e.g. ``net/ipv4/ip_forward``."""
    path = _sysctl_path(key)
    if netns is None:
        return Path(path).read_text().strip()
    proc = run(netns, ["cat", path])
    if proc.returncode != 0:
        raise OSError(f"read {path} in {netns}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Write a sysctl (path form, e.g. ``net/ipv4/conf/nxb-x/route_localnet``) in ``netns``."""
    path = _sysctl_path(key)
    if netns is None:
        Path(path).write_text(value + "\n")
        return
    proc = run(netns, ["tee", path], input=value + "\n")
    if proc.returncode != 0:
        raise OSError(f"write {path} in {netns}: {proc.stderr.strip()}")
