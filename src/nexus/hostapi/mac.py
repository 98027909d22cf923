"""MAC addresses of guest NICs: locally administered unicast, derived or random.

The manager picks a NIC's MAC (:func:`generate_mac`); the agent checks it and derives its
bridges' MACs with :func:`mac_from_bytes`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection


def mac_from_bytes(raw: bytes) -> str:
    """A locally administered unicast MAC from the first six bytes of ``raw``."""
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
        mac = mac_from_bytes(raw)
        if mac not in used:
            return mac
    raise RuntimeError("could not find a free MAC address")  # pragma: no cover
