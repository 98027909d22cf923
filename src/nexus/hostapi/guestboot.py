"""How a guest boots into its identity: the kernel ``ip=`` arguments, the machine id, the
hostname, and the identity a restored guest is given again. Pure functions of a
:class:`~nexus.hostapi.models.VmSpec` (or its parts), shared by the manager (which writes
the spec) and the agent (which boots it).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from typing import Any

from nexus.hostapi.models import VmSpec


def machine_id_for(vm_id: str) -> str:
    """The VM's machine id: stable for its life, unique per VM (clones get their own)."""
    return hashlib.sha256(f"nexus-machine-id:{vm_id}".encode()).hexdigest()[:32]


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


def guest_hostname(spec: VmSpec) -> str:
    """The hostname a VM's guest gets: its name reduced to letters, digits and '-'."""
    return "".join(c for c in (spec.name or spec.id) if c.isalnum() or c == "-")[:63] or "nexus"


def guest_identity(spec: VmSpec) -> dict[str, Any]:
    """What makes this VM's guest itself (for ``GuestClient.set_identity`` after a memory
    restore into a new VM): hostname, the ``nexus.machine_id=`` kernel argument and, per
    NIC ``net<i>`` (the guest's ``eth<i>``), its MAC and address; the default route goes
    through the first NIC's gateway, as the ``ip=`` kernel arguments say for a cold boot."""
    machine_id = None
    for arg in spec.kernel_args.split():
        if arg.startswith("nexus.machine_id="):
            machine_id = arg.split("=", 1)[1]
    nics = []
    for i, nic in enumerate(spec.nics):
        if not nic.mac or not nic.ip or nic.prefix is None:
            continue
        index = (nic.id or f"net{i}").removeprefix("net")
        netmask = ipaddress.IPv4Network(f"0.0.0.0/{nic.prefix}").netmask
        nics.append(
            {"dev": f"eth{index}", "mac": nic.mac, "addr": nic.ip, "netmask": str(netmask),
             "gateway": (nic.gateway or "") if i == 0 else ""}
        )  # fmt: skip
    return {"hostname": guest_hostname(spec), "machine_id": machine_id, "nics": nics}
