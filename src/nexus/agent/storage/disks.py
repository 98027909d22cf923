"""Per-VM copy-on-write root disks.

A VM never writes the shared image file. :func:`new_root_disk` gives it its own disk:

* a **qcow2 overlay** over the image's raw rootfs (``qemu-img create -b``; instant, only
  the VM's own writes take space) when the VMM reads qcow2 (QEMU) and no growth is asked;
* else :func:`clone_disk`: a **reflink** (``FICLONE``, instant and space-sharing on
  btrfs/xfs) when the filesystem supports it, else a **sparse copy** (only data extents are
  copied; holes stay holes), grown with ``resize2fs`` when a larger size is asked.

Snapshots and clones copy a VM's disk file as it is (an overlay stays an overlay over the
same image file, which the manager keeps while any VM or snapshot uses it). The method used
is reported so operators can see why a clone was slow.

Formats are recorded, never probed: the agent writes ``<disk>.json`` (:class:`DiskRecord`)
when it makes an overlay, copies it with the disk, and every reader (the VMM drivers,
``qemu-img``, snapshots) takes the format from there. A file without a record is raw,
whatever its first bytes say; that is what stops a guest from turning its own disk into a
qcow2 image whose backing file is a host file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nexus.agent.vmm.base import DiskFormat, DiskSpec
from nexus.agent.vmm.sandbox import run_on_file
from nexus.core.files import copy_into, write_json_atomic

ROOT_DISK = "disk.img"  # a VM's (and a snapshot's) root disk: raw ext4 or a qcow2 overlay
DiskMethod = Literal["qcow2-overlay", "reflink", "sparse-copy"]


class DiskError(Exception):
    """A disk operation failed."""


@dataclass(frozen=True)
class CloneResult:
    """How a disk was cloned and its final size."""

    path: Path
    method: DiskMethod
    size_bytes: int  # the size the guest sees
    grown: bool = False


@dataclass(frozen=True)
class DiskRecord:
    """How the agent made a disk file, kept beside it in ``<disk>.json`` (agent-owned, 0600).

    This record, never the file's bytes, decides how a disk is opened: a guest can write
    anything into a raw disk, including a qcow2 header naming a host file as its backing.
    A disk without a record is raw. Only overlays the agent made are ``qcow2``; their
    ``backing`` is the image rootfs chosen by the agent (opened raw and read-only).
    """

    format: DiskFormat
    virtual_size: int
    backing: Path | None = None

    def spec(self, path: Path, *, readonly: bool = False) -> DiskSpec:
        """The VMM-facing description of the disk at ``path``."""
        return DiskSpec(Path(path), self.format, readonly, self.backing)


def record_path(disk: Path) -> Path:
    """Where the format record of ``disk`` lives."""
    disk = Path(disk)
    return disk.with_name(f"{disk.name}.json")


def write_record(disk: Path, rec: DiskRecord) -> None:
    """Record how ``disk`` was made (atomic; removed again for a raw disk: no record = raw)."""
    target = record_path(disk)
    if rec.format == "raw":
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        return
    data = {
        "format": rec.format,
        "virtual_size": rec.virtual_size,
        "backing": str(rec.backing) if rec.backing else None,
        "backing_format": "raw",
    }
    write_json_atomic(target, data, mode=0o600)


def read_record(disk: Path) -> DiskRecord:
    """The recorded format of ``disk``: raw (its file size) unless the agent recorded an
    overlay. Raises :class:`DiskError` for an unreadable or inconsistent record."""
    disk = Path(disk)
    try:
        raw = record_path(disk).read_text()
    except FileNotFoundError:
        return DiskRecord("raw", disk.stat().st_size)
    except OSError as exc:
        raise DiskError(f"cannot read the format record of {disk}: {exc}") from exc
    try:
        data = json.loads(raw)
        fmt = data["format"]
        size = int(data["virtual_size"])
        backing = Path(data["backing"]) if data.get("backing") else None
    except (ValueError, KeyError, TypeError) as exc:
        raise DiskError(f"bad format record for {disk}: {exc}") from exc
    if fmt != "qcow2" or backing is None or not backing.is_absolute():
        raise DiskError(f"bad format record for {disk}: {data!r}")
    return DiskRecord("qcow2", size, backing)


def disk_format(path: Path) -> DiskFormat:
    """The recorded format of ``path`` (see :class:`DiskRecord`; never read from the file)."""
    return read_record(path).format


def virtual_size(path: Path) -> int:
    """The size the guest sees: the file size (raw) or the recorded overlay size."""
    return read_record(path).virtual_size


def backing_file(path: Path) -> Path | None:
    """The recorded raw file a qcow2 overlay reads unwritten clusters from (None for raw)."""
    return read_record(path).backing


def _image_opts(path: Path, rec: DiskRecord) -> list[str]:
    """``qemu-img --image-opts`` for a recorded disk: format named, backing pinned."""
    if rec.format == "raw" or rec.backing is None:
        return ["--image-opts", f"driver=raw,file.driver=file,file.filename={_opt(path)}"]
    return ["--image-opts",
            f"driver=qcow2,file.driver=file,file.filename={_opt(path)},"
            f"backing.driver=raw,backing.file.driver=file,"
            f"backing.file.filename={_opt(rec.backing)}"]  # fmt: skip


def _opt(path: Path) -> str:
    """A path as a QEMU option value (commas doubled)."""
    return str(path).replace(",", ",,")


def _run_tool(argv: list[str], what: str) -> None:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskError(f"{what} failed: {exc}") from exc
    if res.returncode != 0:
        raise DiskError(f"{what} failed: {(res.stderr or res.stdout).strip()[-500:]}")


def overlay_disk(base: Path, dest: Path) -> CloneResult:
    """A qcow2 overlay ``dest`` over the raw file ``base`` (absolute backing path): reads of
    unwritten clusters go to ``base``, every write lands in ``dest``. ``base`` must never
    change while an overlay uses it (image files are immutable)."""
    base = Path(base).resolve()
    dest = Path(dest)
    if not base.is_file():
        raise DiskError(f"image file {base} does not exist")
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        _run_tool(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(tmp)],
            f"qemu-img create (overlay of {base})",
        )
        rec = DiskRecord("qcow2", base.stat().st_size, base)
        write_record(dest, rec)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return CloneResult(dest, "qcow2-overlay", rec.virtual_size)


def new_root_disk(
    image_rootfs: Path, dest: Path, *, size_mib: int | None = None, qcow2: bool = False
) -> CloneResult:
    """A VM's private root disk from an image's raw rootfs: a qcow2 overlay when ``qcow2``
    (the VMM reads it) and no growth is asked, else :func:`clone_disk`."""
    if not Path(image_rootfs).is_file():
        raise DiskError(f"image file {image_rootfs} does not exist")
    grow = size_mib is not None and size_mib * 1024 * 1024 > Path(image_rootfs).stat().st_size
    if qcow2 and not grow:
        return overlay_disk(image_rootfs, dest)
    return clone_disk(image_rootfs, dest, size_mib=size_mib)


def clone_disk(src: Path, dest: Path, *, size_mib: int | None = None) -> CloneResult:
    """Make ``dest`` a private copy of the disk file ``src`` (reflink, else sparse copy);
    a recorded qcow2 overlay is copied as an overlay of the same backing file, and its
    record goes with it.

    With ``size_mib`` larger than the disk, the copy is grown and its ext4 filesystem
    resized (``resize2fs``); an overlay is first flattened to raw (``qemu-img convert``
    with the recorded format and pinned backing). Never shrinks. ``dest`` is replaced if
    it exists.
    """
    src = Path(src)
    dest = Path(dest)
    if not src.is_file():
        raise DiskError(f"image file {src} does not exist")
    rec = read_record(src)
    grow = size_mib is not None and size_mib * 1024 * 1024 > rec.virtual_size
    tmp = dest.with_name(f".{dest.name}.tmp")
    if grow and rec.format == "qcow2":
        try:
            _run_tool(
                ["qemu-img", "convert", "-q", *_image_opts(src, rec), "-O", "raw", str(tmp)],
                f"qemu-img convert (flatten {src})",
            )
            write_record(dest, DiskRecord("raw", 0))
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if size_mib is not None:
            grow_ext4(dest, size_mib)
        return CloneResult(dest, "sparse-copy", dest.stat().st_size, True)
    try:
        method: DiskMethod = copy_into(src, tmp)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise DiskError(f"cannot copy {src} to {dest}: {exc}") from exc
    write_record(dest, rec)
    os.replace(tmp, dest)
    if grow and size_mib is not None:
        grow_ext4(dest, size_mib)
    return CloneResult(dest, method, virtual_size(dest), grow)


def grow_ext4(path: Path, size_mib: int) -> None:
    """Grow an unmounted ext4 image file to ``size_mib`` and resize its filesystem."""
    new_size = size_mib * 1024 * 1024
    if path.stat().st_size >= new_size:
        return
    os.truncate(path, new_size)
    # the file system may be a guest's (a snapshot or clone): never parse it as root
    try:
        res = run_on_file(lambda name: ["resize2fs", "-f", name, f"{size_mib}M"], path)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DiskError(f"resize2fs {path} failed: {exc}") from exc
    if res.returncode != 0:
        raise DiskError(f"resize2fs {path} failed: {(res.stderr or res.stdout).strip()[-500:]}")


def allocated_bytes(path: Path) -> int:
    """Bytes actually allocated on disk for ``path`` (sparse-aware)."""
    return Path(path).stat().st_blocks * 512
