"""nexus.images.checks: container signatures (head and tail), kernel check, and an e2fsck
that really runs unprivileged and leaves the checked file as it found it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from nexus.images import checks

UID = 64090
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")


def ext4(tmp: Path, name: str = "fs.ext4") -> Path:
    p = tmp / name
    subprocess.run(["mkfs.ext4", "-q", "-F", str(p), "8M"], check=True)
    return p


def test_fixed_vhd_footer_and_gpt_are_containers(tmp_path: Path) -> None:
    fs = ext4(tmp_path)
    assert checks.find_container(fs) is None
    with fs.open("r+b") as f:  # a fixed VHD is raw data + a 512-byte "conectix" footer
        f.seek(-512, os.SEEK_END)
        f.write(b"conectix")
    assert "VHD" in str(checks.find_container(fs))
    gpt = ext4(tmp_path, "gpt.img")
    with gpt.open("r+b") as f:
        f.seek(512)
        f.write(b"EFI PART")
    with pytest.raises(checks.ImageCheckError, match="GPT"):
        checks.refuse_container(gpt)


def test_kernel_check(tmp_path: Path) -> None:
    bz = tmp_path / "bz"
    head = bytearray(0x400)
    head[0x1FE:0x200] = b"\x55\xaa"
    head[0x202:0x206] = b"HdrS"
    bz.write_bytes(bytes(head))
    checks.check_kernel(bz)
    (tmp_path / "elf").write_bytes(b"\x7fELF" + b"\0" * 100)
    checks.check_kernel(tmp_path / "elf")
    (tmp_path / "pe").write_bytes(b"MZ" + b"\0" * 0x400)
    with pytest.raises(checks.ImageCheckError, match="not a Linux kernel"):
        checks.check_kernel(tmp_path / "pe")


@root_only
def test_e2fsck_runs_unprivileged_and_restores_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "private"
    d.mkdir(mode=0o700)
    fs = ext4(d)
    fs.chmod(0o600)
    before = fs.stat()
    checks.fsck_ext4(fs, uid=UID, timeout_s=60)
    after = fs.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
    )
    # without the group grant the same call is refused: e2fsck is not running as root
    monkeypatch.setattr(checks, "_readable_by_group", lambda p, g: contextlib.nullcontext())
    with pytest.raises(checks.ImageCheckError, match="Permission denied"):
        checks.fsck_ext4(fs, uid=UID, timeout_s=60)


def test_e2fsck_never_as_root(tmp_path: Path) -> None:
    with pytest.raises(checks.ImageCheckError, match="must not be root"):
        checks.fsck_ext4(ext4(tmp_path), uid=0, timeout_s=60)


def test_corrupt_file_system_is_refused(tmp_path: Path) -> None:
    fs = ext4(tmp_path)
    with fs.open("r+b") as f:  # wreck the group descriptors and inode table
        f.seek(4096)
        f.write(os.urandom(256 * 1024))
    with pytest.raises(checks.ImageCheckError, match="e2fsck -fn found"):
        checks.check_rootfs(fs, uid=UID, timeout_s=60)
