"""Pure helpers: interface names and bridge MAC addresses (guest MACs and the kernel ``ip=``
arguments are part of the manager <-> agent contract: :mod:`nexus.hostapi.mac`,
:mod:`nexus.hostapi.guestboot`).

Everything here is deterministic and free of side effects, so the agent can recompute a
name after a restart instead of storing it.
"""

from __future__ import annotations

import base64
import hashlib

from nexus.hostapi.mac import mac_from_bytes

#: Prefix of every Nexus bridge (``nxb-`` + 8 characters = 12 characters).
BRIDGE_PREFIX = "nxb-"
#: Prefix of every Nexus tap (``nxt-`` + 8 characters + ``n`` + NIC index <= 15 characters).
TAP_PREFIX = "nxt-"
#: Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
IFNAME_MAX = 15
#: NIC indexes 0..99 fit in a tap name.
MAX_NIC_INDEX = 99


def _digest8(*parts: str) -> str:
    """8 lowercase base32 characters (40 bits) of sha256 over ``parts``."""
    h = hashlib.sha256("\0".join(parts).encode()).digest()
    return base64.b32encode(h).decode("ascii")[:8].lower()


def bridge_name(network_id: str) -> str:
    """The bridge for ``network_id`` on every host: ``nxb-`` + 8 hash characters."""
    if not network_id:
        raise ValueError("network id must not be empty")
    return BRIDGE_PREFIX + _digest8("net", network_id)


def tap_prefix(vm_id: str) -> str:
    """The name prefix shared by all taps of ``vm_id`` (``nxt-<8 chars>n``)."""
    if not vm_id:
        raise ValueError("vm id must not be empty")
    return TAP_PREFIX + _digest8("vm", vm_id) + "n"


def tap_name(vm_id: str, nic_index: int) -> str:
    """The tap for NIC ``nic_index`` (0..99) of ``vm_id``, e.g. ``nxt-k3x9aq2mn0``."""
    if not 0 <= nic_index <= MAX_NIC_INDEX:
        raise ValueError(f"nic_index must be 0..{MAX_NIC_INDEX}, got {nic_index}")
    name = f"{tap_prefix(vm_id)}{nic_index}"
    if len(name) > IFNAME_MAX:  # pragma: no cover - guarded by the arithmetic above
        raise ValueError(f"interface name too long: {name}")
    return name


def bridge_mac(network_id: str) -> str:
    """A stable MAC for the bridge of ``network_id`` (so it never changes as taps join)."""
    return mac_from_bytes(hashlib.sha256(f"bridge\0{network_id}".encode()).digest())
