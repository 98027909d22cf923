"""Volume files on a host: ``<state_dir>/volumes/<volume id>.img``.

A volume is a sparse file, formatted with ``mkfs.ext4`` (no loop mount) when its filesystem
is ``ext4`` or left empty when ``raw``. It outlives the VMs it is attached to; the VMM gets it
as an extra virtio-blk disk (``/dev/vdb``, ``/dev/vdc``... in the guest, in attachment order).
Grow only: :func:`ensure_volume` extends the file (and the ext4 filesystem, offline) when the
requested size is larger and refuses to shrink. ``mkfs.ext4``, ``e2fsck`` and ``resize2fs``
never run as root: they run as the unprivileged tools uid, which reaches only the one file.
Volumes are raw disks to the VMM, always (their format is never read from their bytes).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Literal

from nexus.agent.vmm.sandbox import run_on_file

Filesystem = Literal["ext4", "raw"]
VOLUME_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VolumeError(Exception):
    """A volume file could not be created, resized or removed."""


def volumes_dir(state_dir: Path) -> Path:
    """Where a host keeps its volume files."""
    return Path(state_dir) / "volumes"


def volume_path(state_dir: Path, volume_id: str) -> Path:
    """The file of ``volume_id`` (the id is validated: it becomes a file name)."""
    if not VOLUME_ID.match(volume_id):
        raise VolumeError(f"bad volume id {volume_id!r}")
    return volumes_dir(state_dir) / f"{volume_id}.img"


def _run(argv: list[str], path: Path, ok: tuple[int, ...] = (0,)) -> None:
    """Run ``argv + [path]`` as the unprivileged tools uid, which reaches only ``path``:
    a guest wrote the volume's bytes (see :func:`nexus.agent.vmm.sandbox.run_on_file`)."""
    try:
        proc = run_on_file(lambda name: [*argv, name], path, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VolumeError(f"{argv[0]}: {exc}") from exc
    if proc.returncode not in ok:
        raise VolumeError(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")


def ensure_volume(path: Path, size_mib: int, filesystem: Filesystem) -> int:
    """Create the volume file (sparse, formatted) or grow it to ``size_mib``; idempotent.

    Returns the size in MiB. A failed creation leaves no file behind.
    """
    if size_mib < 1:
        raise VolumeError("size_mib must be positive")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    want = size_mib * 1024 * 1024
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.truncate(want)
            os.chmod(tmp, 0o600)
            if filesystem == "ext4":
                _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "nexus-vol"], tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size_mib
    have = path.stat().st_size
    if want < have:
        raise VolumeError(
            f"volume is {have // 2**20} MiB; shrinking to {size_mib} is not supported"
        )
    if want > have:
        with open(path, "r+b") as fh:
            fh.truncate(want)
        if filesystem == "ext4":
            _run(["e2fsck", "-f", "-y"], path, ok=(0, 1))
            _run(["resize2fs"], path)
    return size_mib


def delete_volume(path: Path) -> bool:
    """Remove the volume file; False if it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
