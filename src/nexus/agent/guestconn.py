"""One persistent guest-agent connection per VM, shared by everything on this host.

QEMU's guest channel (``<vm_dir>/guest.sock``, a chardev server) accepts ONE client at a
time, so the agent holds exactly one :class:`~nexus.guest.client.GuestClient` per VM and
multiplexes readiness, exec, shells and metrics over it. :class:`GuestConnections` keeps
each connection alive: it connects when a VM starts or is adopted, re-handshakes and
reconnects when the channel is lost, and pings it every few seconds (not while the VM is
paused: a frozen guest cannot answer).

The runtime's readiness probe (:meth:`GuestConnections.readiness`) waits on the same
connection instead of opening a competing one.

Every guest is hostile: the client enforces :class:`~nexus.guest.client.ChannelLimits`, and a
guest that floods its channel or breaks the protocol is disconnected. The reason is kept per
VM (:meth:`GuestConnections.violation`, reported to the manager in the VM's status, which
records it in ``state_reason`` and the audit log) until the VM is started again, and the
connection is retried only after a growing back-off, so a flooding guest cannot keep the
agent busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from nexus.agent.metrics import GUEST_CHANNEL_ERRORS
from nexus.agent.vmm.base import CONSOLE_LOG, GuestChannel
from nexus.guest.client import ChannelLimits, GuestClient, GuestError, GuestRemoteError

log = logging.getLogger(__name__)

KEEPALIVE_S = 10.0
PING_TIMEOUT_S = 10.0
RECONNECT_S = 0.5
POLL_S = 0.25
HELLO_TIMEOUT_S = 30.0
VSOCK_PORT = 1024
#: What the guest agent prints on the serial console once it (or an agent-less init) is up.
READY_MARKER = "NEXUS-GUEST-READY"
#: First wait before reconnecting to a guest that was disconnected for a violation; doubles
#: after each further violation, up to VIOLATION_BACKOFF_MAX_S.
VIOLATION_BACKOFF_S = 30.0
VIOLATION_BACKOFF_MAX_S = 600.0

StateOf = Callable[[], str | None]
"""Returns the VM's runtime state (``running``, ``paused``...), or None once it is gone."""
OnViolation = Callable[[str], None]
"""Called with the reason when the guest was disconnected for flooding or a protocol error."""


async def console_readiness(vm_dir: Path, timeout: float, marker: str = READY_MARKER) -> bool:
    """Ready when ``marker`` appears on the serial console (printed by the guest agent, or by
    the init of images without an agent)."""
    deadline = time.monotonic() + timeout
    log_path = vm_dir / CONSOLE_LOG
    pos = 0
    carry = b""
    while time.monotonic() < deadline:
        try:
            with open(log_path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                if size < pos:  # truncated by cap_console
                    pos = 0
                fh.seek(pos)
                chunk = fh.read()
                pos += len(chunk)
        except FileNotFoundError:
            chunk = b""
        if chunk:
            buf = carry + chunk
            if marker.encode() in buf:
                return True
            carry = buf[-len(marker) :]
        await asyncio.sleep(0.05)
    return False


class GuestUnavailable(Exception):
    """The guest agent is not connected (VM not running, still booting, or no agent)."""


class GuestConn:
    """The maintained connection of one VM."""

    def __init__(
        self,
        vm_id: str,
        vm_dir: Path,
        state_of: StateOf,
        limits: ChannelLimits | None = None,
        on_violation: OnViolation | None = None,
        channel: GuestChannel = "virtio-serial",
    ) -> None:
        self.vm_id = vm_id
        self.dir = vm_dir
        # Firecracker's vsock: guest.sock is the vsock UDS, each connection says CONNECT <port>
        self.vsock_port = VSOCK_PORT if channel == "vsock" else None
        self.state_of = state_of
        self.limits = limits
        self.on_violation = on_violation
        self.backoff = VIOLATION_BACKOFF_S
        self.client: GuestClient | None = None
        self.connected = asyncio.Event()
        self.facts: dict[str, object] | None = None
        self.connects = 0
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()

    def start(self) -> None:
        """Start maintaining the connection (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._maintain(), name=f"guestconn-{self.vm_id}")

    async def stop(self) -> None:
        """Stop maintaining and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._drop()

    def reset(self) -> None:
        """Drop the current connection; the maintainer reconnects (e.g. after a reboot)."""
        client = self.client
        self.client = None
        self.connected.clear()
        if client is not None:
            asyncio.ensure_future(client.close())
        self._kick.set()

    async def _drop(self) -> None:
        client, self.client = self.client, None
        self.connected.clear()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def get(self, timeout: float = 10.0) -> GuestClient:
        """The connected, hand-shaken client; waits up to ``timeout`` seconds."""
        self.start()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.connected.wait()
                    client = self.client
                    if client is not None and not client.closed:
                        return client
                    self.connected.clear()
        except TimeoutError:
            raise GuestUnavailable(
                f"the guest agent of VM {self.vm_id} is not connected "
                "(is the VM running and booted from a Nexus image?)"
            ) from None

    async def _violated(self, client: GuestClient) -> bool:
        """If ``client`` was dropped for a violation: report it, back off; True if so."""
        reason = client.violation
        if reason is None:
            return False
        log.warning("guest %s: disconnected: %s", self.vm_id, reason)
        if self.on_violation is not None:
            self.on_violation(reason)
        await self._drop()
        with contextlib.suppress(Exception):
            await client.close()
        await asyncio.sleep(self.backoff)
        self.backoff = min(self.backoff * 2, VIOLATION_BACKOFF_MAX_S)
        return True

    async def _maintain(self) -> None:
        port = self.vsock_port
        while True:
            state = self.state_of()
            if state is None or state in ("stopped", "failed", "stopping"):
                await self._drop()
                return
            if self.client is not None and await self._violated(self.client):
                continue
            if self.client is None or self.client.closed:
                await self._drop()
                try:
                    client = await GuestClient.connect(
                        str(self.dir / "guest.sock"),
                        timeout=5.0,
                        vsock_port=port,
                        limits=self.limits,
                    )
                except GuestError:
                    await asyncio.sleep(RECONNECT_S)
                    continue
                try:
                    self.facts = await client.hello(timeout=HELLO_TIMEOUT_S)
                except (GuestError, OSError) as exc:
                    log.debug("guest %s: hello failed: %s", self.vm_id, exc)
                    if await self._violated(client):
                        continue
                    with contextlib.suppress(Exception):
                        await client.close()
                    await asyncio.sleep(RECONNECT_S)
                    continue
                self.client = client
                self.connects += 1
                self.connected.set()
                log.info("guest %s: agent connected (%s)", self.vm_id, self.facts.get("hostname"))
            # keepalive: wait KEEPALIVE_S, waking early on loss, a state change or reset()
            self._kick.clear()
            waited = 0.0
            while waited < KEEPALIVE_S and not self._kick.is_set():
                if self.client is None or self.client.closed:
                    break
                if self.state_of() in (None, "stopped", "failed", "stopping"):
                    break
                await asyncio.sleep(POLL_S)
                waited += POLL_S
            client = self.client
            if client is None or client.closed or self.state_of() != "running":
                continue
            if client.paused:  # a slow reader holds the channel: the guest cannot answer
                continue
            try:
                await client.ping(timeout=PING_TIMEOUT_S)
            except GuestError as exc:
                if self.state_of() == "running":
                    log.warning("guest %s: keepalive failed (%s); reconnecting", self.vm_id, exc)
                    await self._drop()


class GuestConnections:
    """Every VM's :class:`GuestConn`, keyed by VM id."""

    def __init__(
        self,
        state_of: Callable[[str], str | None],
        limits: ChannelLimits | None = None,
        *,
        channel: GuestChannel = "virtio-serial",
    ) -> None:
        self._state_of = state_of
        self.limits = limits
        self.channel = channel  # from the VMM driver's capabilities
        self.conns: dict[str, GuestConn] = {}
        self.violations: dict[str, str] = {}

    def violation(self, vm_id: str) -> str | None:
        """Why ``vm_id``'s guest was last disconnected for flooding or breaking the protocol
        since the VM (re)started, or None."""
        return self.violations.get(vm_id)

    def _record(self, vm_id: str, reason: str) -> None:
        self.violations[vm_id] = reason
        GUEST_CHANNEL_ERRORS.inc()

    def attach(self, vm_id: str, vm_dir: Path) -> GuestConn:
        """Start (or keep) maintaining the connection of ``vm_id``. Called when the VM boots
        or is adopted, so it also forgets the VM's last violation and back-off."""
        self.violations.pop(vm_id, None)
        conn = self.conns.get(vm_id)
        if conn is None or conn.dir != vm_dir:
            conn = GuestConn(
                vm_id,
                vm_dir,
                lambda: self._state_of(vm_id),
                limits=self.limits,
                on_violation=lambda reason: self._record(vm_id, reason),
                channel=self.channel,
            )
            self.conns[vm_id] = conn
        conn.backoff = VIOLATION_BACKOFF_S
        conn.start()
        return conn

    def detach(self, vm_id: str) -> None:
        """Stop and close the connection of ``vm_id`` (in the background)."""
        self.violations.pop(vm_id, None)
        conn = self.conns.pop(vm_id, None)
        if conn is not None:
            asyncio.ensure_future(conn.stop())

    async def close_all(self) -> None:
        """Close every connection (agent shutdown)."""
        conns = list(self.conns.values())
        self.conns.clear()
        for conn in conns:
            await conn.stop()

    async def client(self, vm_id: str, timeout: float = 10.0) -> GuestClient:
        """The shared client of a VM (raises :class:`GuestUnavailable`)."""
        conn = self.conns.get(vm_id)
        if conn is None:
            raise GuestUnavailable(f"VM {vm_id} has no guest connection (is it running?)")
        return await conn.get(timeout)

    def note_error(self, vm_id: str, exc: BaseException) -> None:
        """Reconnect when the guest forgot our session (rebooted: ``handshake_required``)."""
        if isinstance(exc, GuestRemoteError) and exc.code == "handshake_required":
            conn = self.conns.get(vm_id)
            if conn is not None:
                conn.reset()

    async def readiness(self, vm_dir: Path, timeout: float) -> bool:
        """Readiness probe: True once the shared connection's HELLO is answered, or the
        console shows the ready marker (images whose init prints it without an agent)."""
        conn = self.attach(vm_dir.name, vm_dir)
        deadline = time.monotonic() + timeout

        async def hello() -> bool:
            with contextlib.suppress(GuestUnavailable):
                await conn.get(max(0.0, deadline - time.monotonic()))
                return True
            return False

        tasks = [
            asyncio.ensure_future(hello()),
            asyncio.ensure_future(console_readiness(vm_dir, timeout)),
        ]
        try:
            for fut in asyncio.as_completed(tasks):
                if await fut:
                    return True
            return False
        finally:
            for t in tasks:
                t.cancel()
