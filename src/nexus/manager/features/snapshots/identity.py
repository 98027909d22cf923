"""Clone uniqueness: every VM made from another (clone, restore-as-new) gets a fresh identity.

:func:`allocate_identity` is THE one place that decides a new VM's MAC address(es), IP
address(es), hostname and machine id. The networks feature extends it (MAC/IP from its IPAM);
callers pass the result to the agent unchanged.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from nexus.manager.features.vms.models import Vm


@dataclass
class Identity:
    """Everything that must differ between a VM and its copies."""

    hostname: str
    machine_id: str
    nics: list[dict[str, Any]] = field(default_factory=list)  # [{id, mac, ip?, network?}]

    def kernel_args(self) -> str:
        """Extra kernel arguments that carry the identity to a cold-booting guest."""
        return f"nexus.machine_id={self.machine_id}"

    def as_dict(self) -> dict[str, Any]:
        """For operation results and audit."""
        return {"hostname": self.hostname, "machine_id": self.machine_id, "nics": self.nics}


def new_mac() -> str:
    """A random locally administered unicast MAC (02:xx:...)."""
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def allocate_identity(
    vm: Vm, *, source: Vm | None = None, source_nics: list[dict[str, Any]] | None = None
) -> Identity:
    """A fresh identity for ``vm`` (a copy of ``source``): hostname = the new VM's name, a new
    machine id, and one new MAC per NIC of the source (IPs: the networks feature fills them in
    from its address pool; without it NICs keep no IP)."""
    nics = [
        {**{k: v for k, v in n.items() if k not in ("mac", "ip", "tap")}, "mac": new_mac()}
        for n in (source_nics or [])
    ]
    return Identity(hostname=vm.name, machine_id=uuid.uuid4().hex, nics=nics)
