"""The VMM sandbox: one unprivileged uid and one cgroup per VM, like Firecracker's jailer.

Why: a VMM parses everything a hostile guest sends it. If it is exploited, the attacker
should hold a uid that owns nothing on the host but that VM's own files, inside a cgroup
that bounds its memory, CPU and number of tasks, behind QEMU's seccomp filter.

* **uids** come from ``settings.vmm_uid_range`` (``"64100-65099"``; never 0). The first one
  runs file-system tools on tenant disks (:func:`run_on_file`); each VM gets the lowest
  free one after it (gid = uid), recorded in ``<vm_dir>/sandbox.json`` so that an agent
  restart re-adopts the VMM with the same ids; deleting the VM dir frees it.
* **cgroups**: :func:`detect_cgroups` finds the host's layout. cgroup v2 (one unified
  tree with the ``memory``, ``cpu`` and ``pids`` controllers): ``<root>/<parent>/<vm>``
  with ``memory.max``, ``cpu.max``, ``pids.max``. cgroup v1 (one mount per controller):
  ``<root>/{memory,cpu,pids}/<parent>/<vm>`` with ``memory.limit_in_bytes``,
  ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` and ``pids.max``. The VMM joins them before it
  executes (:func:`wrap_argv`), so no guest instruction runs outside them.
* **privilege drop**: :func:`wrap_argv` prefixes the VMM argv with a tiny ``sh`` that
  writes its own pid into the cgroups, then ``setpriv`` (util-linux) to the VM's uid/gid
  with no supplementary groups, no capabilities and ``no_new_privs``, then ``exec``s the
  VMM. The pid never changes, so the recorded pid/start time stay valid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nexus.core.files import write_json_atomic

SANDBOX_FILE = "sandbox.json"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "cpu", "pids")


class SandboxError(Exception):
    """The sandbox of a VMM could not be set up (no free uid, no usable cgroup, ...)."""


def parse_uid_range(text: str) -> range:
    """``"64100-65099"`` -> ``range(64100, 65100)``; refuses 0 and reversed or bad ranges."""
    try:
        lo_s, hi_s = text.split("-", 1)
        lo, hi = int(lo_s), int(hi_s)
    except ValueError as exc:
        raise ValueError(f"uid range {text!r} is not FIRST-LAST") from exc
    if lo < 1 or hi < lo or hi > 2**32 - 2:
        raise ValueError(f"uid range {text!r} must be 1 <= FIRST <= LAST < 4294967295")
    return range(lo, hi + 1)


@dataclass(frozen=True)
class VmIds:
    """The uid and gid a VM's VMM runs as."""

    uid: int
    gid: int


@contextlib.contextmanager
def _locked(vms_dir: Path) -> Iterator[None]:
    """An exclusive lock over uid allocation in ``vms_dir`` (across threads and agents): a
    ``flock`` on the directory itself, so no lock file is left among the VM dirs."""
    fd = os.open(vms_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_ids(vm_dir: Path) -> VmIds | None:
    """The ids recorded in ``vm_dir`` (None when none are)."""
    try:
        data = json.loads((vm_dir / SANDBOX_FILE).read_text())
        return VmIds(int(data["uid"]), int(data["gid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def allocate_ids(vm_dir: Path, uids: range) -> VmIds:
    """The VM's recorded ids, or the lowest uid of ``uids`` no other VM dir beside it
    records (written to ``sandbox.json``, 0600)."""
    have = read_ids(vm_dir)
    if have is not None:
        if have.uid not in uids or have.uid == 0 or have.gid == 0:
            raise SandboxError(f"{vm_dir / SANDBOX_FILE} names uid {have.uid} outside the range")
        return have
    vms_dir = vm_dir.parent
    with _locked(vms_dir):
        used = set()
        for d in vms_dir.iterdir():
            ids = read_ids(d) if d.is_dir() else None
            if ids is not None:
                used.add(ids.uid)
        for uid in uids[1:]:  # uids[0] is the file-system tools' uid (see tool_ids)
            if uid not in used:
                ids = VmIds(uid, uid)
                write_json_atomic(vm_dir / SANDBOX_FILE, {"uid": ids.uid, "gid": ids.gid})
                return ids
    raise SandboxError(f"no free VMM uid left in {uids.start}-{uids.stop - 1}")


def give(path: Path, ids: VmIds, mode: int = 0o600) -> None:
    """Make ``path`` belong to the VM's uid with ``mode`` (not following symlinks)."""
    os.chown(path, ids.uid, ids.gid, follow_symlinks=False)
    os.chmod(path, mode)


def private_copy(src: Path, dest: Path, ids: VmIds) -> Path:
    """``dest``: a copy of the shared, root-owned file ``src`` readable by the VM's uid only
    (0400). Image files stay root-only; the VMM reads its own copy. Skipped when ``dest``
    already has ``src``'s size and mtime."""
    st = src.stat()
    with contextlib.suppress(FileNotFoundError):
        have = dest.stat()
        if (have.st_size, have.st_mtime_ns, have.st_uid) == (st.st_size, st.st_mtime_ns, ids.uid):
            return dest
    tmp = dest.with_name(f".{dest.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    shutil.copyfile(src, tmp)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    give(tmp, ids, 0o400)
    os.replace(tmp, dest)
    return dest


# --- cgroups -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one VM's cgroup allows."""

    memory_bytes: int
    cpus: int
    pids: int


def limits_for(memory_mib: int, vcpus: int, overhead_mib: int, pids: int) -> Limits:
    """Guest memory plus the VMM's bounded overhead; one CPU per vCPU; ``pids`` tasks."""
    return Limits((memory_mib + overhead_mib) * 1024 * 1024, max(1, vcpus), pids)


@dataclass(frozen=True)
class CgroupLayout:
    """The host's cgroup layout: ``version`` 2 (unified) or 1 (one mount per controller)."""

    version: Literal[1, 2]
    root: Path
    parent: str = "nexus"

    def dirs(self, vm_id: str) -> list[Path]:
        """The cgroup directories of one VM (one on v2, one per controller on v1)."""
        if self.version == 2:
            return [self.root / self.parent / vm_id]
        return [self.root / c / self.parent / vm_id for c in V1_CONTROLLERS]

    def procs_files(self, vm_id: str) -> list[Path]:
        """The ``cgroup.procs`` files a VMM writes its pid into before it executes."""
        return [d / "cgroup.procs" for d in self.dirs(vm_id)]

    def create(self, vm_id: str, limits: Limits) -> list[Path]:
        """Create (or update) the VM's cgroups with ``limits``; returns their directories."""
        if self.version == 2:
            parent = self.root / self.parent
            parent.mkdir(exist_ok=True)
            for d in (self.root, parent):  # delegate the controllers down to the VM's group
                _write(d / "cgroup.subtree_control", "+memory +cpu +pids")
            d = parent / vm_id
            d.mkdir(exist_ok=True)
            _write(d / "memory.max", str(limits.memory_bytes))
            with contextlib.suppress(FileNotFoundError):
                _write(d / "memory.swap.max", "0")
            _write(d / "cpu.max", f"{limits.cpus * CPU_PERIOD_US} {CPU_PERIOD_US}")
            _write(d / "pids.max", str(limits.pids))
            return [d]
        made = []
        for ctl in V1_CONTROLLERS:
            d = self.root / ctl / self.parent / vm_id
            d.mkdir(parents=True, exist_ok=True)
            made.append(d)
        mem, cpu, pids = made
        _write(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(limits.cpus * CPU_PERIOD_US))
        _write(pids / "pids.max", str(limits.pids))
        return made

    def remove(self, vm_id: str, timeout: float = 2.0) -> None:
        """Remove the VM's cgroups (after its VMM exited). Idempotent; a group that still
        holds tasks after ``timeout`` s is left in place."""
        for d in self.dirs(vm_id):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)

    def members(self, vm_id: str) -> list[int]:
        """Pids in the VM's (first) cgroup."""
        try:
            text = self.procs_files(vm_id)[0].read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def detect_cgroups(root: Path = CGROUP_ROOT, parent: str = "nexus") -> CgroupLayout | None:
    """The usable cgroup layout under ``root``: v2 when ``root`` is a unified hierarchy
    offering memory, cpu and pids; else v1 when those three controllers are mounted as
    ``root/<controller>``; else None."""
    controllers = root / "cgroup.controllers"
    if controllers.is_file():
        have = set(controllers.read_text().split())
        if {"memory", "cpu", "pids"} <= have:
            return CgroupLayout(2, root, parent)
    if all((root / c).is_dir() and (root / c / "cgroup.procs").exists() for c in V1_CONTROLLERS):
        return CgroupLayout(1, root, parent)
    return None


# --- the process wrapper ----------------------------------------------------------------

_JOIN = (  # join every cgroup named before "--", then exec the rest (same pid)
    'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 126; shift; done; '
    'shift; exec "$@"'
)


def wrap_argv(argv: list[str], ids: VmIds, procs_files: list[Path]) -> list[str]:
    """``argv`` started inside the VM's cgroups as the VM's uid/gid, without capabilities,
    supplementary groups or the means to regain privileges (see the module docstring)."""
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [
        "/bin/sh", "-c", _JOIN, "nexus-sandbox", *map(str, procs_files), "--",
        setpriv, f"--reuid={ids.uid}", f"--regid={ids.gid}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
        *argv,
    ]  # fmt: skip


def unwrap_argv(argv: list[str]) -> list[str]:
    """The VMM's own argv inside a :func:`wrap_argv` command line."""
    if argv[:2] == ["/bin/sh", "-c"] and "--" in argv:
        rest = argv[argv.index("--") + 1 :]
        if "--" in rest:
            return rest[rest.index("--") + 1 :]
    return argv


# --- file-system tools on tenant data ----------------------------------------------------


def tool_ids(uid_range: str | None = None) -> VmIds:
    """The uid/gid that file-system tools run as on tenant disks: the first uid of the VMM
    range (:func:`allocate_ids` never hands it to a VM). ``uid_range`` defaults to the
    configured ``vmm_uid_range``."""
    if uid_range is None:
        from nexus.core.settings import Settings

        uid_range = Settings().vmm_uid_range
    uid = parse_uid_range(uid_range).start
    return VmIds(uid, uid)


def run_on_file(
    argv_for: Callable[[str], list[str]],
    path: Path,
    *,
    ids: VmIds | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run a tool (``e2fsck``, ``resize2fs``, ``mkfs.ext4``...) on the disk file ``path``,
    which a guest may have written, as an unprivileged uid that can reach only that file.

    Why: these tools parse every byte of the file system, and a parser bug must not hand a
    guest root on the host. The file is opened here and handed to the tool as
    ``/proc/self/fd/N`` (its directory stays closed to the uid); for the call it belongs to
    that uid, then gets its owner and mode back. ``argv_for`` builds the argv from the name.
    A non-root agent runs the tool as itself (already unprivileged).
    """
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        kw: dict[str, Any] = {}
        if os.geteuid() == 0:
            who = ids or tool_ids()
            os.fchown(fd, who.uid, who.gid)
            os.fchmod(fd, 0o600)
            kw = {"user": who.uid, "group": who.gid, "extra_groups": []}
        try:
            return subprocess.run(
                argv_for(f"/proc/self/fd/{fd}"),
                pass_fds=(fd,),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd="/",
                **kw,
            )
        finally:
            if kw:
                os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, st.st_mode & 0o7777)
    finally:
        os.close(fd)
