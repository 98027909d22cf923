"""Pure helpers: interface names, MAC addresses and guest kernel ``ip=`` arguments.

Everything here is deterministic and free of side effects, so the agent can recompute a
name after a restart instead of storing it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
from collections.abc import Collection, Sequence

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


def _mac_from_bytes(raw: bytes) -> str:
    b = bytearray(raw[:6])
    b[0] = (b[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{x:02x}" for x in b)


def is_local_unicast_mac(mac: str) -> bool:
    """True for a well-formed locally-administered unicast MAC (``x2:..``, ``x6:..`` ...)."""
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        return False
    try:
        first = int(parts[0], 16)
        for p in parts[1:]:
            int(p, 16)
    except ValueError:
        return False
    return (first & 0x03) == 0x02


def generate_mac(
    vm_id: str | None = None,
    nic_index: int = 0,
    *,
    taken: Collection[str] = (),
) -> str:
    """A locally-administered unicast MAC address.

    With ``vm_id`` the MAC is derived from ``(vm_id, nic_index)`` and is stable across
    restarts and hosts; without it, it is random. Either way an address in ``taken``
    (compared case-insensitively) is never returned: the derivation is salted and retried.
    """
    used = {m.lower() for m in taken}
    for attempt in range(1000):
        if vm_id is None:
            raw = secrets.token_bytes(6)
        else:
            raw = hashlib.sha256(f"mac\0{vm_id}\0{nic_index}\0{attempt}".encode()).digest()
        mac = _mac_from_bytes(raw)
        if mac not in used:
            return mac
    raise RuntimeError("could not find a free MAC address")  # pragma: no cover


def bridge_mac(network_id: str) -> str:
    """A stable MAC for the bridge of ``network_id`` (so it never changes as taps join)."""
    return _mac_from_bytes(hashlib.sha256(f"bridge\0{network_id}".encode()).digest())


def kernel_ip_arg(
    ip: str,
    prefix: int,
    gateway: str | None,
    hostname: str = "",
    device: str = "eth0",
    dns: Sequence[str] = (),
) -> str:
    """The guest kernel's static-address argument (Documentation/admin-guide/nfs/nfsroot).

    ``ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>[:<dns0>[:<dns1>]]``
    with autoconf ``off``, e.g. ``ip=10.0.0.2::10.0.0.1:255.255.255.0:web:eth0:off``.
    Up to two DNS servers may be appended (the kernel exposes them in ``/proc/net/pnp``).
    """
    addr = ipaddress.IPv4Address(ip)
    netmask = ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask
    gw = str(ipaddress.IPv4Address(gateway)) if gateway else ""
    if ":" in hostname or " " in hostname or ":" in device or " " in device:
        raise ValueError("hostname and device must not contain ':' or spaces")
    if len(hostname) > 64:
        raise ValueError("hostname too long for the kernel (max 64)")
    if len(dns) > 2:
        raise ValueError("the kernel accepts at most two DNS servers")
    fields = [str(addr), "", gw, str(netmask), hostname, device, "off"]
    fields += [str(ipaddress.IPv4Address(d)) for d in dns]
    return "ip=" + ":".join(fields)


def resolv_conf(nameservers: Sequence[str], search: Sequence[str] = ()) -> str:
    """The text of a guest ``/etc/resolv.conf`` (for the guest agent or image builder)."""
    lines = [f"nameserver {ipaddress.ip_address(n)}" for n in nameservers]
    if search:
        lines.insert(0, "search " + " ".join(search))
    return "\n".join(lines) + "\n"
