"""Wires a VM's NICs and volumes on this host (used by :class:`nexus.agent.runtime.AgentRuntime`).

A NIC in ``VmSpec.nics`` is a :class:`~nexus.hostapi.models.NicConfig` (id ``net0``, MAC, IP,
``network``: id, cidr, nat, isolated). Before the VMM starts, :meth:`NetWire.prepare` ensures
the network's bridge and rules (:mod:`nexus.agent.net`) and creates one tap per NIC, writing
its name into the NIC (``tap``, which the VMM driver reads). Taps are deleted when the VM
stops or is deleted; a bridge is removed when its last tap goes, and the ``inet nexus`` table
when no Nexus link and no port forward is left — so an idle host carries no Nexus network
state.

A volume in ``VmSpec.volumes`` is a :class:`~nexus.hostapi.models.VolumeRef`; its file is
``<state_dir>/volumes/<id>.img`` (:mod:`nexus.agent.storage.volumes`).

The host network is created lazily: a VM without NICs never touches netlink or nftables.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from nexus.agent.net import AsyncHostNetwork, HostNetwork, NetError, NetworkSpec
from nexus.agent.net.firewall import LINK_LOCAL
from nexus.agent.net.hostinfo import host_subnets
from nexus.agent.net.models import NetworkInUseError
from nexus.agent.storage.volumes import VolumeError, volume_path
from nexus.agent.vmm.base import VmmError
from nexus.core.settings import Settings
from nexus.hostapi.models import NetworkRef, NicConfig, VolumeRef

log = logging.getLogger(__name__)


class NetWireError(VmmError):
    """A NIC or volume of a VM could not be set up (the partial work was undone)."""


def network_spec(net: NetworkRef) -> NetworkSpec:
    """The host-network spec of a NIC's ``network`` entry."""
    return NetworkSpec(id=net.id, cidr=net.cidr, nat=net.nat, isolated=net.isolated)


def port_range(spec: str) -> range:
    """``"20000-29999"`` -> range(20000, 30000)."""
    lo, _, hi = spec.partition("-")
    return range(int(lo), int(hi) + 1)


def host_network(settings: Settings) -> HostNetwork:
    """The agent's host network, with the isolation settings of ``settings``."""
    blocked = [] if settings.guest_allow_link_local else [LINK_LOCAL]
    return HostNetwork(
        protected_host_ports=sorted({settings.port, settings.agent_port}),
        allowed_host_ports=port_range(settings.agent_port_forward_range),
        capture_host_local=settings.port_forward_host_local,
        blocked_subnets=blocked + list(settings.guest_blocked_subnets),
        guest_host_tcp_ports=settings.guest_host_tcp_ports,
    )


def _wired(nics: list[NicConfig]) -> bool:
    """True if any NIC asks for a Nexus network (others bring their own tap)."""
    return any(n.network is not None for n in nics)


class NetWire:
    """NICs, port forwards and volume disks of the VMs of one agent."""

    def __init__(self, settings: Settings, host: HostNetwork | None = None) -> None:
        self.settings = settings
        self._host = AsyncHostNetwork(host) if host is not None else None
        self._lock = asyncio.Lock()

    @property
    def host(self) -> AsyncHostNetwork:
        """The host network (created on first use)."""
        if self._host is None:
            self._host = AsyncHostNetwork(host_network(self.settings))
        return self._host

    # --- NICs -----------------------------------------------------------------------------

    async def prepare(
        self, vm_id: str, nics: list[NicConfig], owner: tuple[int, int] | None = None
    ) -> None:
        """Ensure the networks and create the taps of ``nics`` (sets ``nic.tap``), owned
        by ``owner`` (uid, gid) when the VMM runs unprivileged (a jailed Firecracker).

        On failure every tap of the VM is deleted again and :class:`NetWireError` raised.
        """
        kw: dict[str, int] = {"uid": owner[0], "gid": owner[1]} if owner else {}
        if not _wired(nics):
            return
        async with self._lock:
            try:
                for i, nic in enumerate(nics):
                    if nic.network is None:
                        continue  # a tap wired by the caller (tests, custom setups)
                    spec = network_spec(nic.network)
                    await self.host.ensure_network(spec)
                    mac, ip = nic.mac, nic.ip
                    if not (mac and ip):
                        raise ValueError(f"NIC {i} has no MAC and IP (needed for its filter)")
                    nic.tap = await self.host.create_tap(vm_id, i, spec.id, mac=mac, ip=ip, **kw)
            except (NetError, OSError, ValueError, KeyError) as exc:
                await self._release_locked(vm_id, nics)
                raise NetWireError(f"cannot set up the NICs of VM {vm_id}: {exc}") from exc
            except BaseException:
                await self._release_locked(vm_id, nics)
                raise

    async def release(self, vm_id: str, nics: list[NicConfig]) -> None:
        """Delete the VM's taps (and bridges/table nothing uses any more). Never raises."""
        if not _wired(nics):
            return
        async with self._lock:
            await self._release_locked(vm_id, nics)

    async def forget(self, vm_id: str, nics: list[NicConfig]) -> None:
        """The VM is deleted: remove its port forwards too. Never raises."""
        if not _wired(nics):
            return
        async with self._lock:
            try:
                await self.host.remove_vm_port_forwards(vm_id)
            except (NetError, OSError) as exc:
                log.warning("cannot remove port forwards of %s: %s", vm_id, exc)
            await self._release_locked(vm_id, nics)

    async def _release_locked(self, vm_id: str, nics: list[NicConfig]) -> None:
        try:
            await self.host.delete_vm_taps(vm_id)
        except (NetError, OSError) as exc:
            log.warning("cannot delete taps of %s: %s", vm_id, exc)
        for nic in nics:
            if nic.network is not None:
                nic.tap = None
        ids = {n.network.id for n in nics if n.network is not None}
        for network_id in sorted(ids):
            await self._gc_network(network_id)
        await self._gc_table()

    async def _gc_network(self, network_id: str) -> None:
        try:
            await self.host.delete_network(network_id)
        except NetworkInUseError:
            pass  # other VMs of the network still run here
        except (NetError, OSError) as exc:
            log.warning("cannot remove network %s: %s", network_id, exc)

    async def _gc_table(self) -> None:
        """Drop the nftables table when no Nexus link and no port forward is left."""
        try:
            left = await self.host.leftovers()
            if any(item.startswith("link ") for item in left):
                return
            if await self.host.list_port_forwards():
                return
            host = self.host.host
            if await asyncio.to_thread(host.nft.table_exists):
                await asyncio.to_thread(host.nft.delete_table)
        except (NetError, OSError) as exc:
            log.warning("cannot remove the nexus nftables table: %s", exc)

    def host_subnets(self) -> list[str] | None:
        """The host's own IPv4 subnets for the facts (``None`` if netlink cannot say).

        A quick netlink dump, run in a worker thread because pyroute2's synchronous
        socket cannot be used from inside a running event loop (the facts are built there).
        """
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(host_subnets, None).result(timeout=10)
        except (OSError, NetlinkError, TimeoutError) as exc:
            log.warning("cannot list the host's subnets: %s", exc)
            return None

    # --- networks and port forwards (agent API) -------------------------------------------

    async def update_network(self, net: NetworkRef) -> bool:
        """Bring an existing bridge's rules in line with ``net``; False if not present here."""
        spec = network_spec(net)
        async with self._lock:
            if not await asyncio.to_thread(self.host.host.network_exists, spec.id):
                return False
            await self.host.ensure_network(spec)
            return True

    async def delete_network(self, network_id: str) -> None:
        """Remove a network's bridge and rules (raises NetworkInUseError while in use)."""
        async with self._lock:
            await self.host.delete_network(network_id)
            await self._gc_table()

    async def remove_port_forward(self, vm_id: str, host_port: int, protocol: str) -> bool:
        """Remove one forward; drop the table if nothing else is left."""
        async with self._lock:
            removed = await self.host.remove_port_forward(
                vm_id,
                host_port,
                "udp" if protocol == "udp" else "tcp",
            )
            await self._gc_table()
            return removed

    # --- volumes --------------------------------------------------------------------------

    def volume_disks(self, volumes: list[VolumeRef]) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
        """(all volume files in attachment order, the read-only ones) for the VMM."""
        disks: list[Path] = []
        readonly: list[Path] = []
        for vol in volumes:
            try:
                path = volume_path(self.settings.state_dir, vol.id)
            except VolumeError as exc:
                raise NetWireError(f"bad volume entry {vol!r}: {exc}") from exc
            if not path.is_file():
                raise NetWireError(f"volume {vol.id} has no file on this host ({path})")
            disks.append(path)
            if vol.read_only:
                readonly.append(path)
        return tuple(disks), tuple(readonly)
