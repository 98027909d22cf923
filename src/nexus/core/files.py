"""Files that hold state or secrets: private directories, atomic (private) writes, content
hashes and space-sharing copies.

Nexus state is created 0700 (directories) / 0600 (files): a local account on the host must
not read the database, keys, tokens or tenant data. Use these helpers instead of
``Path.write_text``/``mkdir`` for anything under ``state_dir``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
FICLONE = 0x40049409  # _IOW(0x94, 9, int)
CopyMethod = Literal["reflink", "sparse-copy"]


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing and make ``path`` itself 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def write_private(path: Path, data: bytes | str, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename), created with
    ``mode`` from the start so the content is never readable by others, even briefly."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def is_private(path: Path) -> bool:
    """True when neither group nor others have any access to ``path``."""
    return (Path(path).stat().st_mode & 0o077) == 0


def write_json_atomic(path: Path, data: Any, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (:func:`write_private`), created
    with ``mode``; values JSON does not know (paths, datetimes) are written as strings."""
    write_private(path, json.dumps(data, indent=2, default=str), mode)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content (1 MiB reads)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def try_reflink(src_fd: int, dst_fd: int) -> bool:
    """Make ``dst_fd`` share ``src_fd``'s extents (``FICLONE``); False where the filesystem
    cannot (then copy the bytes)."""
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


def sparse_copy(src_fd: int, dst_fd: int, size: int) -> None:
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


def copy_into(src: Path, tmp: Path) -> CopyMethod:
    """Copy the file ``src`` to ``tmp`` (created or truncated): a reflink where the
    filesystem shares extents, else a sparse copy. Raises ``OSError``."""
    with open(src, "rb") as s, open(tmp, "wb") as d:
        if try_reflink(s.fileno(), d.fileno()):
            return "reflink"
        sparse_copy(s.fileno(), d.fileno(), os.fstat(s.fileno()).st_size)
        return "sparse-copy"


def copy_file(src: Path, dest: Path) -> CopyMethod:
    """Replace ``dest`` atomically with a copy of ``src`` (:func:`copy_into`, then rename)."""
    tmp = Path(dest).with_name(f".{Path(dest).name}.tmp")
    try:
        method = copy_into(Path(src), tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return method
