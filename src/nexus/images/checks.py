"""Checks of image artefacts a tenant or an admin hands us: a Nexus image's root file system
is a *raw ext4* file by contract, and its kernel a Linux bzImage or ELF vmlinux.

Why this matters: QEMU (and ``qemu-img``) open any file whose first bytes say qcow2, vmdk...
as that container, and a container can name a *backing file* anywhere on the host (a qcow2
``backing file``, a vmdk descriptor's extent) — a rootfs that is really a qcow2 with
``backing file = /etc/shadow`` hands that host file to the tenant's VM. The agent passes
``format=raw`` explicitly, and these checks refuse such files at the door as well.

* :func:`refuse_container` looks for the header of every disk container QEMU can open (and a
  few more: LUKS, partition tables, LVM, dm-verity) at the offsets where they live. Fixed
  byte signatures at known offsets, not libmagic: libmagic names only its *first* match, and a
  crafted file can carry an ext4 magic and a qcow2 header at once; here every signature is
  looked at.
* :func:`fsck_ext4` runs ``e2fsck -fn`` (read-only, forced full check) on the file as an
  unprivileged uid/gid when we are root: e2fsck parses hostile metadata, so it must not run
  as root. It gets the file as an inherited read-only descriptor (``/proc/self/fd/N``) and
  the file's group is the check gid (mode ``g+r``) only for the call; the directories on the
  way stay closed to it. We check instead of rebuilding with ``mkfs.ext4 -d`` because a
  rebuild needs the tree *out* of the image (a loop mount or ``debugfs rdump``, both parsing
  the same hostile metadata, the first as root in the kernel), and it would change the
  image's bytes (the SHA-256 the uploader verified).

Both the manager (uploads, imports) and the agent (files its image cache fetched) use them.
Errors are :class:`ImageCheckError` with a message fit for an API ``detail``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

EXT4_MAGIC_OFFSET = 1080
EXT4_MAGIC = b"\x53\xef"
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 512
E2FSCK_DETAIL_CHARS = 400

# (offset, signature, what). A negative offset counts from the end of the file.
CONTAINER_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"QFI\xfb", "qcow2 (QEMU copy-on-write) image"),
    (0, b"QED\x00", "QED (QEMU enhanced disk) image"),
    (0, b"KDMV", "VMDK (VMware sparse) image"),
    (0, b"COWD", "VMDK (VMware ESX sparse) image"),
    (0, b"vhdxfile", "VHDX (Hyper-V) image"),
    (0, b"conectix", "VHD (Virtual PC, dynamic) image"),
    (-512, b"conectix", "VHD (Virtual PC, fixed) image footer"),
    (0, b"<<< Oracle VM VirtualBox Disk Image >>>", "VDI (VirtualBox) image"),
    (0x40, b"\x7f\x10\xda\xbe", "VDI (VirtualBox) image"),
    (0, b"LUKS\xba\xbe", "LUKS encrypted volume"),
    (0x4000, b"SKUL\xba\xbe", "LUKS2 encrypted volume (secondary header)"),
    (0, b"WithoutFreeSpace", "Parallels image"),
    (0, b"WithouFreSpacExt", "Parallels image"),
    (0, b"Bochs Virtual HD Image", "Bochs image"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop compressed image"),
    (-512, b"koly", "DMG (Apple disk image)"),
    (512, b"EFI PART", "GPT-partitioned disk"),
    (512, b"LABELONE", "LVM physical volume"),
    (0, b"verity\x00\x00", "dm-verity hash device"),
    (0, b"integrt\x00", "dm-integrity device"),
)
# Text markers of a VMDK descriptor file (its extents name host paths), anywhere in the head.
VMDK_DESCRIPTOR_MARKERS = (b"# Disk DescriptorFile", b"createType=")


class ImageCheckError(ValueError):
    """The file is not what an image file must be; the message says what was found."""


def find_container(path: Path) -> str | None:
    """The kind of disk container whose header ``path`` carries, or None."""
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
        size = os.fstat(f.fileno()).st_size
        tail = b""
        if size >= TAIL_BYTES:
            f.seek(size - TAIL_BYTES)
            tail = f.read(TAIL_BYTES)
    for offset, sig, what in CONTAINER_SIGNATURES:
        if offset < 0:
            if tail[: len(sig)] == sig and size >= -offset:
                return what
        elif head[offset : offset + len(sig)] == sig:
            return what
    if any(m in head for m in VMDK_DESCRIPTOR_MARKERS):
        return "VMDK descriptor file (its extents name other files)"
    return None


def refuse_container(path: Path, label: str | None = None) -> None:
    """Raise :class:`ImageCheckError` if ``path`` is a disk container, not a raw image."""
    what = find_container(path)
    if what is not None:
        raise ImageCheckError(
            f"{label or path.name}: found a {what}, but image root file systems must be raw "
            "ext4 (convert with `qemu-img convert -O raw`, then check it with `e2fsck -f`)"
        )


def check_ext4_magic(path: Path, label: str | None = None) -> None:
    """The ext2/3/4 superblock magic at byte 1080, else :class:`ImageCheckError`."""
    with path.open("rb") as f:
        f.seek(EXT4_MAGIC_OFFSET)
        magic = f.read(2)
    if magic != EXT4_MAGIC:
        raise ImageCheckError(
            f"{label or path.name}: not an ext4 file system image (no superblock magic at "
            f"byte {EXT4_MAGIC_OFFSET})"
        )


def check_kernel(path: Path, label: str | None = None) -> None:
    """A bzImage (boot flag 0xAA55 at 0x1FE and 'HdrS' at 0x202) or an ELF vmlinux."""
    with path.open("rb") as f:
        head = f.read(0x206)
    if head[:4] == b"\x7fELF":
        return
    if head[0x1FE:0x200] == b"\x55\xaa" and head[0x202:0x206] == b"HdrS":
        return
    raise ImageCheckError(
        f"{label or path.name}: not a Linux kernel (neither a bzImage nor an ELF vmlinux)"
    )


def _e2fsck() -> str:
    found = shutil.which("e2fsck") or shutil.which("e2fsck", path="/usr/sbin:/sbin")
    if found is None:
        raise ImageCheckError("cannot check the file system: e2fsck is not installed")
    return found


@contextlib.contextmanager
def _readable_by_group(path: Path, gid: int) -> Iterator[None]:
    """Let group ``gid`` (and nobody else new) read ``path`` for the block; restore after."""
    st = path.stat()
    os.chown(path, -1, gid)
    os.chmod(path, (st.st_mode & 0o7707) | 0o040)
    try:
        yield
    finally:
        os.chown(path, -1, st.st_gid)
        os.chmod(path, st.st_mode & 0o7777)


def fsck_ext4(path: Path, *, uid: int, timeout_s: float, label: str | None = None) -> None:
    """``e2fsck -fn`` the file; any problem it reports raises :class:`ImageCheckError`.

    As root, e2fsck runs as ``uid`` (and the equal gid, no supplementary groups) with the
    file as an inherited read-only descriptor; otherwise as ourselves."""
    name = label or path.name
    if uid <= 0:
        raise ImageCheckError(f"{name}: refusing to run e2fsck as uid {uid} (must not be root)")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        argv = [_e2fsck(), "-fn", f"/proc/self/fd/{fd}"]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        drop = os.geteuid() == 0
        ctx = _readable_by_group(path, uid) if drop else contextlib.nullcontext()
        with ctx:
            try:
                proc = subprocess.run(
                    argv,
                    pass_fds=(fd,),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=timeout_s,
                    cwd="/",
                    env=env,
                    user=uid if drop else None,
                    group=uid if drop else None,
                    extra_groups=[] if drop else None,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise ImageCheckError(
                    f"{name}: e2fsck did not finish within {timeout_s:g} s"
                ) from exc
    finally:
        os.close(fd)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith(("e2fsck 1.", "Pass "))]
        text = "; ".join(lines).replace(f"/proc/self/fd/{fd}", name)
        text = "".join(c if c.isprintable() else "?" for c in text)[:E2FSCK_DETAIL_CHARS]
        raise ImageCheckError(
            f"{name}: e2fsck -fn found a damaged or inconsistent ext4 file system "
            f"(exit {proc.returncode}): {text}"
        )


def check_rootfs(path: Path, *, uid: int, timeout_s: float, label: str | None = None) -> None:
    """Everything a root file system must pass: no container header, the ext4 magic, and a
    clean ``e2fsck -fn`` run unprivileged."""
    refuse_container(path, label)
    check_ext4_magic(path, label)
    fsck_ext4(path, uid=uid, timeout_s=timeout_s, label=label)
