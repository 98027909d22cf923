"""The contract that VMM drivers must follow.

A *VMM driver* turns a :class:`MachineSpec` into a running virtual machine monitor process
(QEMU, Firecracker, ...) and controls it afterwards. The agent's runtime
(:mod:`nexus.agent.runtime`) is the only caller; it never branches on the driver's name —
what a driver can do is described by :class:`DriverCapabilities` (data, not code).

Rules every driver follows
==========================

* **Detached processes.** A VMM process must survive the agent: it is spawned in its own
  session (``start_new_session=True``), with stdin from ``/dev/null`` and stdout/stderr
  appended to ``<vm_dir>/vmm.log``. Use :func:`spawn_detached`.
* **On-disk truth.** Everything needed to find and control a VMM again lives in its VM
  directory ``<state_dir>/vms/<id>/``: ``vmm.json`` (driver, pid, process start time,
  argv), the control socket (``qmp.sock`` / ``api.sock``), ``guest.sock``, ``console.log``.
  :meth:`VmmDriver.adopt` rebuilds a :class:`VmmHandle` from that directory after an
  agent restart.
* **PID reuse guard.** A pid alone is never trusted: a handle records the process start
  time (field 22 of ``/proc/<pid>/stat``) and :func:`process_alive` compares it.
* **Idempotence.** ``stop``, ``kill``, ``pause``, ``resume`` on a VMM that is already in
  the requested state (or gone, for ``stop``/``kill``) succeed without error.
  ``start`` on a VM dir whose recorded VMM still runs returns that handle.
* **Optional hooks.** Operations a driver does not support raise
  :class:`UnsupportedOperation`; the capability flags say so up front, so callers check
  ``driver.capabilities`` instead of catching.
* **Errors.** Failures raise :class:`VmmError` with a human message; when the guest died,
  callers add the console tail (see :func:`console_tail`).
* **Formats are data.** Every disk arrives as a :class:`DiskSpec` whose ``format`` the agent
  recorded when it made the file; a driver passes it to the VMM as is and never looks at
  the file's bytes to decide how to open it (a guest writes those bytes).
* **Sandbox.** A driver whose capabilities say ``sandbox`` runs the VMM as the VM's own
  unprivileged uid in the VM's own cgroup (:mod:`nexus.agent.vmm.sandbox`);
  :meth:`VmmDriver.vmm_owner` tells the runtime which uid/gid must own the VM's taps.
* **Bounded logs.** The serial console goes to ``<vm_dir>/console.log``; the driver opens
  it in append mode so that :func:`cap_console` can truncate it while the VMM runs, and
  :func:`rotate_console` is called before every start.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from nexus.core.files import write_json_atomic

AccelMode = Literal["kvm", "tcg", "none"]

CONSOLE_LOG = "console.log"
VMM_LOG = "vmm.log"
VMM_STATE = "vmm.json"
GUEST_SOCK = "guest.sock"
DEFAULT_CONSOLE_CAP = 1024 * 1024


class VmmError(Exception):
    """A VMM operation failed; the message is fit to show to an operator."""


class UnsupportedOperation(VmmError):
    """The driver does not implement this optional operation (see its capabilities)."""


GuestChannel = Literal["virtio-serial", "vsock"]


@dataclass(frozen=True)
class DriverCapabilities:
    """What a driver can do on this host, as data.

    ``accel`` is the acceleration actually used (``kvm`` or ``tcg``; ``none`` for drivers
    that cannot run here); ``accel_warning`` explains a degraded choice (e.g. TCG).
    """

    name: str
    accel: AccelMode
    accel_warning: str | None = None
    pause: bool = True
    snapshots: bool = False
    reboot: bool = False
    graceful_stop: bool = True
    live_resize: bool = False
    guest_channel: GuestChannel = "virtio-serial"
    """How the guest agent is reached: ``vsock`` (Firecracker: ``guest.sock`` is the vsock
    UDS, ``CONNECT <port>`` per connection) or ``virtio-serial`` (QEMU: ``guest.sock`` is
    the port's socket)."""
    qcow2: bool = False  # reads qcow2 disks (root disks become overlays of the image)
    # (uid, gid) that must own the taps, for a VMM without CAP_NET_ADMIN (jailed Firecracker)
    tap_owner: tuple[int, int] | None = None
    kernel_format: Literal["bzImage", "vmlinux"] = "bzImage"
    tested_with_real_guests: bool = True
    # runs each VMM as its VM's own uid in its own cgroup, with a seccomp filter
    sandbox: bool = False


DiskFormat = Literal["raw", "qcow2"]


@dataclass(frozen=True)
class DiskSpec:
    """One disk as the agent recorded it when it made the file.

    ``format`` is never derived from the file's contents: a guest can write any bytes into
    a disk, including a qcow2 header naming a host file as its backing file. ``qcow2`` is
    only ever an overlay the agent made over an image's raw rootfs, and ``backing`` is that
    rootfs as recorded then (the VMM opens it as a pinned raw, read-only node and ignores
    the backing name in the overlay's header).
    """

    path: Path
    format: DiskFormat = "raw"
    readonly: bool = False
    backing: Path | None = None  # qcow2 only: the raw file unwritten clusters come from

    def __post_init__(self) -> None:
        if self.format not in ("raw", "qcow2"):
            raise ValueError(f"unknown disk format {self.format!r}")
        if (self.format == "qcow2") != (self.backing is not None):
            raise ValueError("a qcow2 disk needs its recorded backing file; a raw one has none")


@dataclass(frozen=True)
class NicSpec:
    """One network interface: a host tap device (created by ``agent.net``) and a MAC."""

    id: str
    tap: str
    mac: str


@dataclass(frozen=True)
class MachineSpec:
    """What a driver needs to boot one VM. Paths are absolute host paths."""

    vm_id: str
    vcpus: int
    memory_mib: int
    kernel: Path
    initrd: Path | None = None
    root_disk: DiskSpec | None = None
    kernel_args: str = ""
    nics: tuple[NicSpec, ...] = ()
    extra_disks: tuple[DiskSpec, ...] = ()

    def __post_init__(self) -> None:
        # A bare path is a raw disk: the safe reading of a file nobody recorded.
        if isinstance(self.root_disk, Path):
            object.__setattr__(self, "root_disk", DiskSpec(self.root_disk))
        extra = tuple(d if isinstance(d, DiskSpec) else DiskSpec(Path(d)) for d in self.extra_disks)
        object.__setattr__(self, "extra_disks", extra)

    @property
    def disks(self) -> tuple[DiskSpec, ...]:
        """The root disk (if any) then the extra disks, in the guest's device order."""
        return ((self.root_disk,) if self.root_disk else ()) + self.extra_disks


@dataclass
class VmmHandle:
    """A running (or once running) VMM process, as recorded in ``<vm_dir>/vmm.json``."""

    vm_id: str
    driver: str
    pid: int
    start_time: int
    vm_dir: Path
    argv: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        """Write the handle to ``<vm_dir>/vmm.json`` atomically."""
        data = asdict(self)
        data["vm_dir"] = str(self.vm_dir)
        write_json_atomic(self.vm_dir / VMM_STATE, data, mode=0o644)

    @classmethod
    def load(cls, vm_dir: Path) -> VmmHandle | None:
        """Read ``vmm.json`` from ``vm_dir``; ``None`` when absent or unreadable."""
        try:
            data = json.loads((vm_dir / VMM_STATE).read_text())
            data["vm_dir"] = Path(data["vm_dir"])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError):
            return None


class VmmDriver(abc.ABC):
    """Base class of every VMM driver: the contract VMM drivers must follow.

    Lifecycle, as the runtime drives it::

        handle = await driver.start(spec, vm_dir)        # process runs, guest boots
        await driver.pause(handle); await driver.resume(handle)
        await driver.stop(handle, graceful=True, timeout=20)   # ACPI, then hard stop
        handle = await driver.adopt(vm_dir)               # after an agent restart

    Every method is a coroutine and must not block the event loop for long (use
    ``asyncio.to_thread`` for blocking work). ``vm_dir`` exists before ``start`` and is
    owned by the runtime; drivers create files only inside it.
    """

    #: short stable name ("qemu", "firecracker"); also recorded in vmm.json
    name: str = "base"

    @property
    @abc.abstractmethod
    def capabilities(self) -> DriverCapabilities:
        """What this driver supports on this host."""

    @abc.abstractmethod
    async def start(self, spec: MachineSpec, vm_dir: Path) -> VmmHandle:
        """Spawn a detached VMM for ``spec`` and return once it runs the guest.

        Must rotate the console log, record the handle in ``vm_dir`` and raise
        :class:`VmmError` (with the VMM's own output) if the process exits early.
        """

    @abc.abstractmethod
    async def stop(
        self, handle: VmmHandle, *, graceful: bool = True, timeout: float = 20.0
    ) -> None:
        """Stop the VMM. Graceful: ask the guest to power off (ACPI / Ctrl-Alt-Del) and
        wait up to ``timeout`` seconds, then fall back to :meth:`kill`. Idempotent."""

    async def kill(self, handle: VmmHandle) -> None:
        """Terminate the VMM process now (SIGKILL) and reap it. Idempotent."""
        await kill_process(handle)

    async def pause(self, handle: VmmHandle) -> None:
        """Freeze all vCPUs. Idempotent. Optional (``capabilities.pause``)."""
        raise UnsupportedOperation(f"{self.name}: pause is not supported")

    async def resume(self, handle: VmmHandle) -> None:
        """Unfreeze vCPUs. Idempotent. Optional (``capabilities.pause``)."""
        raise UnsupportedOperation(f"{self.name}: resume is not supported")

    async def reboot(self, handle: VmmHandle) -> None:
        """Reset the guest. Optional (``capabilities.reboot``)."""
        raise UnsupportedOperation(f"{self.name}: reboot is not supported")

    async def status(self, handle: VmmHandle) -> Literal["running", "paused", "stopped"]:
        """Coarse VMM state as seen by the VMM itself ("stopped" = process gone)."""
        return "running" if self.is_alive(handle) else "stopped"

    def is_alive(self, handle: VmmHandle) -> bool:
        """True while the recorded process (same pid *and* start time) exists."""
        return process_alive(handle.pid, handle.start_time)

    async def snapshot(self, handle: VmmHandle, dest: Path) -> None:
        """Save the paused VM's state into directory ``dest``. Optional (``snapshots``)."""
        raise UnsupportedOperation(f"{self.name}: snapshots are not supported")

    async def restore(self, spec: MachineSpec, vm_dir: Path, source: Path) -> VmmHandle:
        """Start a VMM from a snapshot directory made by :meth:`snapshot`. Optional."""
        raise UnsupportedOperation(f"{self.name}: restore is not supported")

    async def adopt(self, vm_dir: Path) -> VmmHandle | None:
        """Re-attach to a VMM recorded in ``vm_dir`` after an agent restart.

        Returns the handle if that exact process still runs, else ``None``. Never starts
        anything.
        """
        handle = VmmHandle.load(vm_dir)
        if handle is None or handle.driver != self.name:
            return None
        return handle if self.is_alive(handle) else None

    def vmm_owner(self, vm_dir: Path) -> tuple[int, int] | None:
        """(uid, gid) the VMM of the VM in ``vm_dir`` runs as when it is not root (so its
        taps must be owned by it); allocated and recorded on first call. ``None``: root."""
        return self.capabilities.tap_owner

    def cleanup(self, vm_dir: Path) -> None:
        """Remove driver runtime files (sockets) from ``vm_dir``. Idempotent."""
        for name in (VMM_STATE, GUEST_SOCK):
            with contextlib.suppress(FileNotFoundError):
                (vm_dir / name).unlink()


# --- process helpers ---------------------------------------------------------------------


def proc_start_time(pid: int) -> int | None:
    """The process start time in clock ticks (``/proc/<pid>/stat`` field 22), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); field 22 is rest[19]
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()[0]


def reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is our (zombie) child; else nothing."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def process_alive(pid: int, start_time: int) -> bool:
    """True if ``pid`` exists, is not a zombie and started at ``start_time``."""
    if pid <= 0:
        return False
    reap(pid)
    st = _proc_state(pid)
    if st is None or st in ("Z", "X"):
        return False
    return proc_start_time(pid) == start_time


def spawn_detached(
    argv: list[str],
    vm_dir: Path,
    *,
    log_name: str = VMM_LOG,
    pass_fds: tuple[int, ...] = (),
) -> tuple[int, int]:
    """Start ``argv`` in its own session, detached from the agent; return (pid, start_time).

    stdin is ``/dev/null``; stdout and stderr are appended to ``<vm_dir>/<log_name>``. The
    process is not killed when the agent exits or receives a terminal signal. ``pass_fds``
    stay open in the child under the same numbers (files the agent opened for a VMM that
    may not open them itself).
    """
    log_path = vm_dir / log_name
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            argv,
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
            cwd=vm_dir,
        )
    start = None
    for _ in range(100):
        start = proc_start_time(proc.pid)
        if start is not None:
            break
        time.sleep(0.001)
    # Popen keeps a reference; we reap via os.waitpid ourselves (see reap()).
    proc.returncode = 0  # silence ResourceWarning on GC; the real status is reaped by pid
    return proc.pid, start or 0


async def wait_exit(handle: VmmHandle, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the handle's process to exit; True if it did."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(handle.pid, handle.start_time):
            return True
        await asyncio.sleep(0.05)
    return not process_alive(handle.pid, handle.start_time)


async def kill_process(handle: VmmHandle) -> None:
    """SIGKILL the handle's process (only if it is still the same process) and wait."""
    if process_alive(handle.pid, handle.start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, signal.SIGKILL)
        await wait_exit(handle, 5.0)


# --- console helpers ---------------------------------------------------------------------


def rotate_console(vm_dir: Path, keep_bytes: int = 64 * 1024) -> None:
    """Before a start: keep the tail of the previous console log as ``console.log.1``."""
    log = vm_dir / CONSOLE_LOG
    if not log.exists():
        return
    with open(log, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - keep_bytes))
        tail = fh.read()
    (vm_dir / f"{CONSOLE_LOG}.1").write_bytes(tail)
    log.unlink()


def cap_console(vm_dir: Path, cap_bytes: int = DEFAULT_CONSOLE_CAP) -> bool:
    """Bound a live console log: past ``cap_bytes``, move its tail aside and truncate.

    Works while the VMM writes because the VMM opened the file with ``O_APPEND``.
    Returns True if the log was truncated.
    """
    log = vm_dir / CONSOLE_LOG
    try:
        if log.stat().st_size <= cap_bytes:
            return False
    except FileNotFoundError:
        return False
    with open(log, "r+b") as fh:
        fh.seek(-min(cap_bytes // 2, fh.seek(0, os.SEEK_END)), os.SEEK_END)
        tail = fh.read()
        (vm_dir / f"{CONSOLE_LOG}.1").write_bytes(tail)
        fh.truncate(0)
    return True


def console_tail(vm_dir: Path, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of the serial console (decoded leniently)."""
    log = vm_dir / CONSOLE_LOG
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def host_tsc_khz() -> int | None:
    """Host TSC frequency in kHz (for the guest's ``tsc_early_khz``), from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        return None
    return None


def hardware_kvm() -> bool:
    """True only for real hardware KVM (kvm_intel/kvm_amd loaded, vmx/svm in CPU flags).

    PVM nested KVM (``kvm_pvm``) does not count: stock guest kernels crash in it.
    """
    if not os.path.exists("/dev/kvm"):
        return False
    if not (os.path.isdir("/sys/module/kvm_intel") or os.path.isdir("/sys/module/kvm_amd")):
        return False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return "vmx" in flags or "svm" in flags
    except OSError:
        return False
    return False
