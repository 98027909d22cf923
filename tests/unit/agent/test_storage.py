"""Per-VM disks (reflink/sparse copy, grow) and image-builder pieces that need no network."""

from __future__ import annotations

import contextlib
import gzip
import io
import subprocess
from pathlib import Path

import pytest

from nexus.agent.storage.disks import (
    DiskError,
    allocated_bytes,
    backing_file,
    clone_disk,
    disk_format,
    new_root_disk,
    virtual_size,
)
from nexus.images import build as imagebuild


def test_sparse_clone_keeps_holes_and_content(tmp_path: Path) -> None:
    src = tmp_path / "img"
    with open(src, "wb") as fh:
        fh.write(b"A" * 4096)
        fh.seek(64 * 1024 * 1024)
        fh.write(b"B" * 4096)
    res = clone_disk(src, tmp_path / "vm.disk")
    assert res.method in ("reflink", "sparse-copy")
    assert res.path.read_bytes() == src.read_bytes()
    assert allocated_bytes(res.path) < 1024 * 1024  # holes stayed holes
    res.path.write_bytes(b"changed")
    assert src.read_bytes()[:4] == b"AAAA"  # the image is never modified


def test_clone_and_grow_ext4(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hello").write_text("hi")
    img = tmp_path / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img), "16M"], check=True)
    res = clone_disk(img, tmp_path / "disk.img", size_mib=48)
    assert res.grown and res.size_bytes == 48 * 1024 * 1024
    out = subprocess.run(["dumpe2fs", "-h", str(res.path)], capture_output=True, text=True)
    blocks = int(
        next(x for x in out.stdout.splitlines() if x.startswith("Block count:")).split()[-1]
    )
    bsize = int(next(x for x in out.stdout.splitlines() if x.startswith("Block size:")).split()[-1])
    assert blocks * bsize == 48 * 1024 * 1024
    cat = subprocess.run(["debugfs", "-R", "cat /hello", str(res.path)], capture_output=True)
    assert cat.stdout == b"hi"


def _ext4(tmp_path: Path, size: str = "16M") -> Path:
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    (tree / "hello").write_text("hi")
    img = tmp_path / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img), size], check=True)
    return img


def _qemu_io(disk: Path, cmd: str) -> str:
    out = subprocess.run(
        ["qemu-io", "-f", disk_format(disk), "-c", cmd, str(disk)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def test_overlay_is_copy_on_write_over_the_image(tmp_path: Path) -> None:
    img = _ext4(tmp_path)
    before = img.read_bytes()
    res = new_root_disk(img, tmp_path / "disk.img", qcow2=True)
    assert res.method == "qcow2-overlay"
    assert disk_format(res.path) == "qcow2" and backing_file(res.path) == img.resolve()
    assert virtual_size(res.path) == res.size_bytes == img.stat().st_size
    assert res.path.stat().st_size < 1024 * 1024  # nothing copied
    # the guest's writes land in the overlay; the image is untouched and still shared
    assert "wrote" in _qemu_io(res.path, "write -P 0xab 1M 64k")
    assert "read" in _qemu_io(res.path, "read -P 0xab 1M 64k")
    assert img.read_bytes() == before
    # the overlay reads unwritten clusters from the image (the ext4 superblock)
    assert "read" in _qemu_io(res.path, "read -P 0x0 0 1k")
    # a copy of an overlay (snapshot, clone) is an overlay of the same image
    copy = clone_disk(res.path, tmp_path / "copy.img")
    assert disk_format(copy.path) == "qcow2" and backing_file(copy.path) == img.resolve()
    assert "read" in _qemu_io(copy.path, "read -P 0xab 1M 64k")


def test_growing_asks_for_a_real_copy(tmp_path: Path) -> None:
    img = _ext4(tmp_path)
    res = new_root_disk(img, tmp_path / "disk.img", size_mib=32, qcow2=True)
    assert res.method in ("reflink", "sparse-copy") and res.grown
    assert disk_format(res.path) == "raw" and res.size_bytes == 32 * 1024 * 1024


def test_growing_a_copy_of_an_overlay_flattens_it(tmp_path: Path) -> None:
    img = _ext4(tmp_path)
    ov = new_root_disk(img, tmp_path / "disk.img", qcow2=True)
    res = clone_disk(ov.path, tmp_path / "big.img", size_mib=40)
    assert res.grown and disk_format(res.path) == "raw"
    assert res.path.stat().st_size == 40 * 1024 * 1024
    cat = subprocess.run(["debugfs", "-R", "cat /hello", str(res.path)], capture_output=True)
    assert cat.stdout == b"hi"


def test_overlay_of_a_missing_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="does not exist"):
        new_root_disk(tmp_path / "nope", tmp_path / "d", qcow2=True)
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d*"))


def test_clone_missing_image(tmp_path: Path) -> None:
    with pytest.raises(DiskError):
        clone_disk(tmp_path / "nope", tmp_path / "d")


def test_cpio_newc_is_reproducible_and_readable(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "link").symlink_to("bin/tool")
    a, b = io.BytesIO(), io.BytesIO()
    imagebuild.write_cpio_newc(root, a)
    imagebuild.write_cpio_newc(root, b)
    assert a.getvalue() == b.getvalue()
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=a.getvalue(), capture_output=True)
    assert listing.stdout.decode().split() == ["bin", "bin/tool", "link"]


def test_extract_vmlinux_from_gzip_payload(tmp_path: Path) -> None:
    elf = b"\x7fELF" + b"\x02\x01\x01" + b"\x00" * 1000
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"MZ" + b"\x00" * 600 + gzip.compress(elf) + b"\x00" * 64)
    assert imagebuild.extract_vmlinux(bz, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == elf
    (tmp_path / "junk").write_bytes(b"\x00" * 2048)
    assert not imagebuild.extract_vmlinux(tmp_path / "junk", tmp_path / "v2")


def test_mirror_and_unknown_image() -> None:
    assert imagebuild.debian_mirror().startswith("http")
    with pytest.raises(imagebuild.ImageBuildError):
        imagebuild.build_image("nope", Path("/tmp"))  # type: ignore[arg-type]


def test_init_scripts_are_valid_sh() -> None:
    for script in (imagebuild.INITRAMFS_INIT, imagebuild.ROOTFS_INIT):
        res = subprocess.run(["busybox", "sh", "-n"], input=script.encode(), capture_output=True)
        assert res.returncode == 0, res.stderr
    assert "NEXUS-GUEST-BOOTED" in imagebuild.ROOTFS_INIT
    assert "python3 -m nexus.guest.agent" in imagebuild.ROOTFS_INIT


def test_a_guest_written_qcow2_header_is_never_followed(tmp_path: Path) -> None:
    """A raw disk whose bytes a guest made into a qcow2 header naming a host file stays raw:
    its format, size and (absent) backing come from the agent's record, and copying or
    growing it never reads the host file."""
    from nexus.agent.storage.disks import record_path

    secret = tmp_path / "secret"
    secret.write_bytes(b"TOP-SECRET-HOST-DATA " * 200)
    secret.chmod(0o600)
    disk = tmp_path / "disk.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret),
                    str(disk), "1M"], check=True)  # fmt: skip
    assert disk.read_bytes()[:4] == b"QFI\xfb" and not record_path(disk).exists()
    assert disk_format(disk) == "raw" and backing_file(disk) is None
    assert virtual_size(disk) == disk.stat().st_size
    copy = tmp_path / "copy.img"
    with contextlib.suppress(DiskError):  # not ext4: resize2fs refuses, that is fine
        clone_disk(disk, copy, size_mib=4)
    assert not copy.exists() or b"TOP-SECRET" not in copy.read_bytes()
    assert not record_path(copy).exists()  # the copy is recorded raw too (no record)
