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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
ROOT_DISK = "disk.img"  # a VM's (and a snapshot's) root disk: raw ext4 or a qcow2 overlay
QCOW2_MAGIC = b"QFI\xfb"
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


def _try_reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in (
            errno.EOPNOTSUPP,
            errno.ENOTTY,
            errno.EXDEV,
            errno.EINVAL,
            errno.ENOSYS,
            errno.EPERM,
        ):
            return False
        raise
    return True


def _sparse_copy(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy only the data extents of ``src`` (SEEK_DATA/SEEK_HOLE); keep holes sparse."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(src_fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no more data
                break
            raise
        hole = os.lseek(src_fd, data, os.SEEK_HOLE)
        off = data
        while off < hole:
            n = min(hole - off, 8 << 20)
            copied = os.copy_file_range(src_fd, dst_fd, n, off, off)
            if copied <= 0:
                buf = os.pread(src_fd, n, off)
                os.pwrite(dst_fd, buf, off)
                copied = len(buf)
            off += copied
        pos = hole
    os.ftruncate(dst_fd, size)


def disk_format(path: Path) -> Literal["qcow2", "raw"]:
    """``qcow2`` if the file starts with the qcow2 magic, else ``raw``."""
    with open(path, "rb") as fh:
        return "qcow2" if fh.read(4) == QCOW2_MAGIC else "raw"


def _qcow2_header(path: Path) -> tuple[int, str | None]:
    """(virtual size, backing file name or None) from a qcow2 header (big-endian)."""
    with open(path, "rb") as fh:
        head = fh.read(32)
        if len(head) < 32 or head[:4] != QCOW2_MAGIC:
            raise DiskError(f"{path} is not a qcow2 image")
        backing_off = int.from_bytes(head[8:16], "big")
        backing_len = int.from_bytes(head[16:20], "big")
        size = int.from_bytes(head[24:32], "big")
        backing = None
        if backing_off and 0 < backing_len <= 1023:
            fh.seek(backing_off)
            backing = fh.read(backing_len).decode("utf-8", errors="replace")
    return size, backing


def virtual_size(path: Path) -> int:
    """The size the guest sees: the file size (raw) or the qcow2 virtual size."""
    if disk_format(path) == "qcow2":
        return _qcow2_header(path)[0]
    return Path(path).stat().st_size


def backing_file(path: Path) -> Path | None:
    """The file a qcow2 overlay reads unwritten clusters from (None for raw files)."""
    if disk_format(path) != "qcow2":
        return None
    name = _qcow2_header(path)[1]
    if name is None:
        return None
    p = Path(name)
    return p if p.is_absolute() else Path(path).parent / p


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
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return CloneResult(dest, "qcow2-overlay", virtual_size(dest))


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
    a qcow2 overlay is copied as an overlay of the same backing file.

    With ``size_mib`` larger than the disk, the copy is grown and its ext4 filesystem
    resized (``resize2fs``); a qcow2 source is first flattened to raw (``qemu-img
    convert``). Never shrinks. ``dest`` is replaced if it exists.
    """
    src = Path(src)
    dest = Path(dest)
    if not src.is_file():
        raise DiskError(f"image file {src} does not exist")
    grow = size_mib is not None and size_mib * 1024 * 1024 > virtual_size(src)
    if grow and disk_format(src) == "qcow2":
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            _run_tool(
                ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(tmp)],
                f"qemu-img convert (flatten {src})",
            )
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        assert size_mib is not None
        grow_ext4(dest, size_mib)
        return CloneResult(dest, "sparse-copy", dest.stat().st_size, True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    size = src.stat().st_size
    with open(src, "rb") as s, open(tmp, "wb") as d:
        try:
            method: DiskMethod
            if _try_reflink(s.fileno(), d.fileno()):
                method = "reflink"
            else:
                _sparse_copy(s.fileno(), d.fileno(), size)
                method = "sparse-copy"
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise DiskError(f"cannot copy {src} to {dest}: {exc}") from exc
    os.replace(tmp, dest)
    if grow:
        assert size_mib is not None
        grow_ext4(dest, size_mib)
    return CloneResult(dest, method, virtual_size(dest), grow)


def grow_ext4(path: Path, size_mib: int) -> None:
    """Grow an unmounted ext4 image file to ``size_mib`` and resize its filesystem."""
    new_size = size_mib * 1024 * 1024
    if path.stat().st_size >= new_size:
        return
    os.truncate(path, new_size)
    _run_tool(["resize2fs", "-f", str(path), f"{size_mib}M"], f"resize2fs {path}")


def allocated_bytes(path: Path) -> int:
    """Bytes actually allocated on disk for ``path`` (sparse-aware)."""
    return Path(path).stat().st_blocks * 512
