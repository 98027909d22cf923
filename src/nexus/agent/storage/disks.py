"""Per-VM copy-on-write root disks.

A VM never boots the shared image file: :func:`clone_disk` gives it its own copy, by
reflink (``FICLONE``, instant and space-sharing on btrfs/xfs) when the filesystem supports
it, else by a sparse copy (only data extents are copied; holes stay holes). The method used
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


class DiskError(Exception):
    """A disk operation failed."""


@dataclass(frozen=True)
class CloneResult:
    """How a disk was cloned and its final size."""

    path: Path
    method: Literal["reflink", "sparse-copy"]
    size_bytes: int
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


def clone_disk(src: Path, dest: Path, *, size_mib: int | None = None) -> CloneResult:
    """Make ``dest`` a private copy of ``src`` (reflink, else sparse copy).

    With ``size_mib`` larger than the image, the file is grown and its ext4 filesystem
    resized (``resize2fs``). Never shrinks. ``dest`` is replaced if it exists.
    """
    src = Path(src)
    dest = Path(dest)
    if not src.is_file():
        raise DiskError(f"image file {src} does not exist")
    tmp = dest.with_name(f".{dest.name}.tmp")
    size = src.stat().st_size
    with open(src, "rb") as s, open(tmp, "wb") as d:
        try:
            method: Literal["reflink", "sparse-copy"]
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
    grown = False
    if size_mib is not None and size_mib * 1024 * 1024 > size:
        grow_ext4(dest, size_mib)
        grown = True
    return CloneResult(dest, method, dest.stat().st_size, grown)


def grow_ext4(path: Path, size_mib: int) -> None:
    """Grow an unmounted ext4 image file to ``size_mib`` and resize its filesystem."""
    new_size = size_mib * 1024 * 1024
    if path.stat().st_size >= new_size:
        return
    os.truncate(path, new_size)
    res = subprocess.run(
        ["resize2fs", "-f", str(path), f"{size_mib}M"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if res.returncode != 0:
        raise DiskError(f"resize2fs {path} failed: {res.stderr.strip()[-500:]}")


def allocated_bytes(path: Path) -> int:
    """Bytes actually allocated on disk for ``path`` (sparse-aware)."""
    return Path(path).stat().st_blocks * 512
