"""Snapshots, restores and disk clones on one host (the agent side of docs/snapshots.md).

On-disk layout::

    <state_dir>/snapshots/<snapshot_id>/
        memory          QEMU migration stream / Firecracker memory file (full snapshots only)
        snapshot.json   driver metadata (full snapshots only)
        disk.img        the VM's root disk at the instant of the snapshot (a qcow2 overlay
                        stays an overlay of the image's rootfs, which must still exist)
        manifest.json   {id, vm_id, kind, spec, guest_ready, files: {name: {sha256, size}}}

A full snapshot of a running VM is: pause -> save device state + memory -> copy the disk
(reflink or sparse copy) -> resume; the guest is frozen only for that window. Checksums are
computed after the resume. Every restore verifies every file against the manifest *before*
it touches the VM, so a corrupt or missing file leaves the VM exactly as it was.

The logic lives here; :mod:`nexus.agent.api.snapshots` serves it and the runtime keeps
owning the VMs (this module takes each VM's lock like the runtime's own commands do).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexus.agent.runtime import ManagedVm, RuntimeProblem
from nexus.agent.storage.disks import ROOT_DISK, DiskError, backing_file, clone_disk
from nexus.agent.vmm.base import UnsupportedOperation, VmmError
from nexus.core.files import sha256_file, write_json_atomic
from nexus.hostapi.guestboot import guest_identity
from nexus.hostapi.models import (
    CloneRequest,
    CloneResult,
    RestoreNewRequest,
    RestoreRequest,
    RestoreResult,
    SnapshotInfo,
    SnapshotRequest,
    VmSpec,
)

if TYPE_CHECKING:
    from nexus.agent.runtime import AgentRuntime

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HASHED = ".hashed.json"  # stat identity of files at their last sha256 (see verify)


# --- errors (RuntimeProblem subclasses, rendered by the agent app) ------------------------


class SnapshotNotFound(RuntimeProblem):
    """No such snapshot on this host."""

    status = 404
    type = "snapshot-not-found"


class SnapshotCorrupt(RuntimeProblem):
    """A snapshot file is missing or does not match its manifest checksum."""

    status = 422
    type = "snapshot-corrupt"


class SnapshotConflict(RuntimeProblem):
    """The snapshot/restore/clone does not fit the current state."""

    status = 409
    type = "vm-state-conflict"


def _err(kind: str, msg: str) -> RuntimeProblem:
    cls = {"notfound": SnapshotNotFound, "corrupt": SnapshotCorrupt}.get(kind, SnapshotConflict)
    return cls(msg)


# --- helpers ----------------------------------------------------------------------------


def snapshots_dir(rt: AgentRuntime) -> Path:
    """``<state_dir>/snapshots``."""
    d = Path(rt.settings.state_dir) / "snapshots"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _checksums(d: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(d.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }


def _stat_id(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _remember_hashed(d: Path, names: list[str]) -> None:
    """Record the on-disk identity of files whose sha256 was just computed or checked."""
    try:
        known = json.loads((d / HASHED).read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    known.update({n: _stat_id(d / n) for n in names})
    write_json_atomic(d / HASHED, known, mode=0o600)


def verify(d: Path, always: bool = False) -> dict[str, Any]:
    """Read the manifest of snapshot dir ``d`` and check every file's size and sha256.

    A file whose size, mtime, ctime and inode are those recorded when its sha256 was last
    computed (``.hashed.json``) is not read again unless ``always``: any write to it (or a
    replacement) changes its ctime, which no user-space call can set back. Raises a 404
    problem if the snapshot is missing, 422 ``snapshot-corrupt`` naming the bad file
    otherwise. Returns the manifest."""
    if not d.is_dir():
        raise _err("notfound", f"snapshot {d.name} does not exist on this host")
    try:
        manifest: dict[str, Any] = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise _err("corrupt", f"snapshot {d.name}: manifest.json unreadable ({exc})") from exc
    try:
        known = {} if always else json.loads((d / HASHED).read_text())
    except (OSError, ValueError):
        known = {}
    hashed: list[str] = []
    for name, meta in manifest.get("files", {}).items():
        p = d / name
        if not p.is_file():
            raise _err("corrupt", f"snapshot {d.name}: file {name} is missing")
        if p.stat().st_size != meta.get("size"):
            raise _err(
                "corrupt",
                f"snapshot {d.name}: file {name} has size {p.stat().st_size}, "
                f"manifest says {meta.get('size')}",
            )
        if isinstance(known, dict) and known.get(name) == _stat_id(p):
            continue
        if sha256_file(p) != meta.get("sha256"):
            raise _err("corrupt", f"snapshot {d.name}: checksum mismatch in {name}")
        hashed.append(name)
    if hashed:
        with contextlib.suppress(OSError):
            _remember_hashed(d, hashed)
    if ROOT_DISK not in manifest.get("files", {}):
        raise _err("corrupt", f"snapshot {d.name}: manifest lists no disk")
    try:
        base = backing_file(d / ROOT_DISK)
    except (OSError, DiskError) as exc:
        raise _err("corrupt", f"snapshot {d.name}: unreadable disk ({exc})") from exc
    if base is not None and not base.is_file():
        raise _err(
            "corrupt", f"snapshot {d.name}: the image file its disk is based on is gone ({base})"
        )
    return manifest


def _has_guest_agent(rt: AgentRuntime, vm_id: str) -> bool:
    conn = rt.guests.conns.get(vm_id)
    return conn is not None and conn.facts is not None


def _verify_always(rt: AgentRuntime) -> bool:
    return rt.settings.snapshot_verify == "always"


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


async def reseed_guest(
    rt: AgentRuntime, vm_id: str, timeout: float = 3.0, *, new_identity: bool = False
) -> dict[str, Any]:
    """After a memory restore: set the guest clock to now and give it fresh entropy through
    the guest agent (``GuestClient.reseed``), over the runtime's one shared guest connection;
    with ``new_identity`` (a NEW VM from another's memory) also make the guest take on this
    VM's hostname, machine id, MACs and addresses (``GuestClient.set_identity``; see
    :func:`nexus.agent.runtime.guest_identity`). Best effort: images without a guest agent
    (the busybox test image) answer ``{"ok": False, "error": ...}`` after ``timeout``."""
    try:
        client = await rt.guests.client(vm_id, timeout=timeout)
        res = await asyncio.wait_for(client.reseed(time.time(), os.urandom(64)), timeout)
        if new_identity:
            ident = guest_identity(rt.get(vm_id).spec)
            res["identity"] = await asyncio.wait_for(client.set_identity(**ident), timeout * 3)
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, **res}


async def _reseed_restored(
    rt: AgentRuntime, vm: ManagedVm, manifest: dict[str, Any], *, new_identity: bool = False
) -> dict[str, Any] | None:
    """:func:`reseed_guest` after a restore that brought a guest's memory back (None when
    none did); skipped at once when no guest agent had answered in the snapshotted guest."""
    if manifest["kind"] != "full" or vm.state not in ("running", "paused"):
        return None
    if not manifest.get("guest_agent", True):
        return {"ok": False, "skipped": "no guest agent had answered in the snapshotted guest"}
    return await reseed_guest(rt, vm.spec.id, new_identity=new_identity)


# --- operations -------------------------------------------------------------------------


async def create_snapshot(rt: AgentRuntime, vm_id: str, req: SnapshotRequest) -> SnapshotInfo:
    """Full (memory + devices + disk) snapshot of a running/paused VM when ``include_memory``
    and the driver supports it; otherwise a disk snapshot (crash-consistent if running)."""
    vm = rt.get(vm_id)
    root = snapshots_dir(rt)
    final = root / req.snapshot_id
    if final.exists():
        raise _err("conflict", f"snapshot {req.snapshot_id} already exists")
    tmp = root / f".{req.snapshot_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    t0 = time.monotonic()
    downtime = 0
    try:
        async with vm.lock:
            live = vm.state in ("running", "paused") and vm.handle is not None
            if vm.state not in ("running", "paused", "stopped", "failed"):
                raise _err("conflict", f"VM {vm_id} is {vm.state}; try again shortly")
            full = live and req.include_memory and rt.driver.capabilities.snapshots
            was_paused = vm.state == "paused"
            disk = vm.dir / ROOT_DISK
            if live:
                assert vm.handle is not None
                t_pause = time.monotonic()
                try:
                    if full:
                        await rt.driver.snapshot(vm.handle, tmp)  # leaves the VM paused
                    elif not was_paused:
                        await rt.driver.pause(vm.handle)
                    res = await asyncio.to_thread(clone_disk, disk, tmp / ROOT_DISK)
                finally:
                    if not was_paused:
                        with contextlib.suppress(VmmError):
                            await rt.driver.resume(vm.handle)
                downtime = _ms(t_pause)
            else:
                res = await asyncio.to_thread(clone_disk, disk, tmp / ROOT_DISK)
            manifest = {
                "id": req.snapshot_id,
                "vm_id": vm_id,
                "kind": "full" if full else "disk",
                "driver": rt.driver.name,
                "spec": vm.spec.model_dump(mode="json"),
                "guest_ready": vm.ready_at is not None,
                # a guest agent had answered: after a restore it can reseed (else skip it)
                "guest_agent": _has_guest_agent(rt, vm_id),
                "was_paused": was_paused,
                "disk_method": res.method,
                "downtime_ms": downtime,
                "created_at": datetime.now(UTC).isoformat(),
            }
        files = await asyncio.to_thread(_checksums, tmp)
        manifest["files"] = files
        manifest["snapshot_ms"] = _ms(t0)
        write_json_atomic(tmp / MANIFEST, manifest, mode=0o600)
        _remember_hashed(tmp, list(files))
        os.replace(tmp, final)
    except (DiskError, UnsupportedOperation, VmmError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _err("conflict", f"snapshot of VM {vm_id} failed: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("snapshot %s of VM %s: %s in %d ms", req.snapshot_id, vm_id, manifest["kind"],
             manifest["snapshot_ms"])  # fmt: skip
    return info_of(final, manifest)


def info_of(d: Path, manifest: dict[str, Any]) -> SnapshotInfo:
    """The wire view of a stored snapshot."""
    files = manifest.get("files", {})
    return SnapshotInfo(
        id=manifest["id"],
        vm_id=manifest["vm_id"],
        kind=manifest["kind"],
        size_bytes=sum(int(f.get("size", 0)) for f in files.values()),
        files=files,
        disk_method=manifest.get("disk_method", ""),
        snapshot_ms=int(manifest.get("snapshot_ms", 0)),
        downtime_ms=int(manifest.get("downtime_ms", 0)),
        created_at=datetime.fromisoformat(manifest["created_at"]),
    )


async def _bring_up(
    rt: AgentRuntime, vm: ManagedVm, src: Path, manifest: dict[str, Any], start: bool
) -> None:
    """With ``vm.lock`` held and no VMM running: resume from memory (full) or boot (disk)."""
    netwire = getattr(rt, "netwire", None)  # taps for the VM's NICs (same device set)
    if start and netwire is not None:
        await netwire.prepare(vm.spec.id, vm.spec.nics, rt.driver.vmm_owner(vm.dir))
    if manifest["kind"] == "full" and start:
        vm.set("starting")
        try:
            vm.handle = await rt.driver.restore(rt._machine_spec(vm), vm.dir, src)
        except (VmmError, OSError) as exc:
            vmm_log = ""
            with contextlib.suppress(OSError):
                vmm_log = (vm.dir / "vmm.log").read_text(errors="replace").strip()[-1500:]
            msg = f"{exc}" + (f"\n--- vmm.log ---\n{vmm_log}" if vmm_log else "")
            vm.set("failed", f"restore failed: {msg}")
            if netwire is not None:
                await netwire.release(vm.spec.id, vm.spec.nics)
            raise _err("conflict", f"restore of VM {vm.spec.id} failed: {msg}") from exc
        if manifest.get("was_paused"):
            with contextlib.suppress(VmmError):
                await rt.driver.pause(vm.handle)
        vm.set("paused" if manifest.get("was_paused") else "running")
        # The guest was ready when it was saved: its memory says so, no new boot happens.
        vm.ready_at = datetime.now(UTC) if manifest.get("guest_ready") else None
        vm.save()
        rt._watch(vm, readiness=vm.ready_at is None)
    elif start:
        vm.set("starting")
        try:
            vm.handle = await rt.driver.start(rt._machine_spec(vm), vm.dir)
        except (VmmError, OSError) as exc:
            vm.set("failed", str(exc))
            if netwire is not None:
                await netwire.release(vm.spec.id, vm.spec.nics)
            return
        vm.set("running")
        rt._watch(vm, readiness=True)


async def restore_in_place(rt: AgentRuntime, vm_id: str, req: RestoreRequest) -> RestoreResult:
    """Roll ``vm_id`` back to a snapshot of it: verify, stop the VMM, put the snapshot's
    disk back, then resume from memory (full) or boot (disk snapshot of a running VM)."""
    vm = rt.get(vm_id)
    src = snapshots_dir(rt) / req.snapshot_id
    t0 = time.monotonic()
    manifest = await asyncio.to_thread(verify, src, _verify_always(rt))  # before touching the VM
    async with vm.lock:
        was_live = vm.state in ("running", "paused", "starting")
        snap_spec = manifest.get("spec", {})
        # A memory image only fits the machine it was taken from.
        vm.spec = vm.spec.model_copy(
            update={
                "vcpus": snap_spec.get("vcpus", vm.spec.vcpus),
                "memory_mib": snap_spec.get("memory_mib", vm.spec.memory_mib),
            }
        )
        rt._unwatch(vm)
        if vm.handle is not None:
            await rt.driver.kill(vm.handle)
            rt.driver.cleanup(vm.dir)
            vm.handle = None
        vm.set("stopped")
        try:
            res = await asyncio.to_thread(clone_disk, src / ROOT_DISK, vm.dir / ROOT_DISK)
        except DiskError as exc:
            vm.set("failed", f"restore: {exc}")
            raise _err("conflict", f"restore of VM {vm_id}: {exc}") from exc
        write_json_atomic(vm.dir / "spec.json", vm.spec.model_dump(mode="json"), mode=0o600)
        await _bring_up(rt, vm, src, manifest, start=manifest["kind"] == "full" or was_live)
    restore_ms = _ms(t0)
    # The guest's clock stood still since the snapshot; its entropy pool is a copy.
    reseed = await _reseed_restored(rt, vm, manifest)
    return RestoreResult(
        status=vm.status(),
        kind=manifest["kind"],
        restore_ms=restore_ms,
        disk_method=res.method,
        reseed=reseed,
    )


def _register_new(rt: AgentRuntime, spec: VmSpec) -> ManagedVm:
    if spec.id in rt.vms or (rt.vms_dir / spec.id).exists():
        raise _err("conflict", f"VM {spec.id} already exists on this host")
    vm_dir = rt.vms_dir / spec.id
    vm_dir.mkdir(parents=True, mode=0o700)
    write_json_atomic(vm_dir / "spec.json", spec.model_dump(mode="json"), mode=0o600)
    vm = ManagedVm(vm_dir, spec)
    return vm


async def restore_as_new(
    rt: AgentRuntime, snapshot_id: str, req: RestoreNewRequest
) -> RestoreResult:
    """A new, independent VM from a snapshot (its own disk copy; memory restored if full),
    then the clone-uniqueness hook :func:`reseed_guest`."""
    src = snapshots_dir(rt) / snapshot_id
    t0 = time.monotonic()
    manifest = await asyncio.to_thread(verify, src, _verify_always(rt))
    snap_spec = manifest.get("spec", {})
    spec = req.spec
    if manifest["kind"] == "full":
        spec = spec.model_copy(
            update={"vcpus": snap_spec.get("vcpus", spec.vcpus),
                    "memory_mib": snap_spec.get("memory_mib", spec.memory_mib)}
        )  # fmt: skip
    vm = _register_new(rt, spec)
    try:
        res = await asyncio.to_thread(
            clone_disk, src / ROOT_DISK, vm.dir / ROOT_DISK, size_mib=spec.disk_size_mib
        )
    except DiskError as exc:
        shutil.rmtree(vm.dir, ignore_errors=True)
        raise _err("conflict", f"cannot copy the snapshot disk: {exc}") from exc
    rt.vms[spec.id] = vm
    async with vm.lock:
        vm.set("stopped")
        await _bring_up(rt, vm, src, manifest, start=req.start)
    restore_ms = _ms(t0)
    reseed = await _reseed_restored(rt, vm, manifest, new_identity=True) if req.reseed else None
    return RestoreResult(
        status=vm.status(),
        kind=manifest["kind"],
        restore_ms=restore_ms,
        disk_method=res.method,
        reseed=reseed,
    )


async def clone_vm(rt: AgentRuntime, src_id: str, req: CloneRequest) -> CloneResult:
    """A new stopped VM whose root disk is a copy-on-write copy (reflink, else sparse copy)
    of ``src_id``'s. A running source is paused for the copy (crash-consistent disk)."""
    src = rt.get(src_id)
    t0 = time.monotonic()
    vm = _register_new(rt, req.spec)
    try:
        async with src.lock:
            paused_here = src.state == "running" and src.handle is not None
            if paused_here and src.handle is not None:
                with contextlib.suppress(UnsupportedOperation):
                    await rt.driver.pause(src.handle)
            try:
                res = await asyncio.to_thread(
                    clone_disk,
                    src.dir / ROOT_DISK,
                    vm.dir / ROOT_DISK,
                    size_mib=req.spec.disk_size_mib,
                )
            finally:
                if paused_here and src.handle is not None:
                    with contextlib.suppress(VmmError):
                        await rt.driver.resume(src.handle)
    except DiskError as exc:
        shutil.rmtree(vm.dir, ignore_errors=True)
        raise _err("conflict", f"cannot clone the disk of VM {src_id}: {exc}") from exc
    rt.vms[req.spec.id] = vm
    vm.set("stopped")
    return CloneResult(status=vm.status(), disk_method=res.method, clone_ms=_ms(t0))


def list_snapshots(rt: AgentRuntime) -> list[SnapshotInfo]:
    """Every complete snapshot on this host (manifest readable)."""
    out = []
    for d in sorted(snapshots_dir(rt).iterdir()):
        if d.name.startswith("."):
            continue
        with contextlib.suppress(OSError, ValueError, KeyError):
            out.append(info_of(d, json.loads((d / MANIFEST).read_text())))
    return out


def delete_snapshot(rt: AgentRuntime, snapshot_id: str) -> None:
    """Remove a snapshot's files (404 if unknown)."""
    d = snapshots_dir(rt) / snapshot_id
    if not d.is_dir() or snapshot_id.startswith("."):
        raise _err("notfound", f"snapshot {snapshot_id} does not exist on this host")
    shutil.rmtree(d)


# --- HTTP -------------------------------------------------------------------------------
