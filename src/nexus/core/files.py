"""Files that hold state or secrets: private directories and atomic private writes.

Nexus state is created 0700 (directories) / 0600 (files): a local account on the host must
not read the database, keys, tokens or tenant data. Use these helpers instead of
``Path.write_text``/``mkdir`` for anything under ``state_dir``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


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
