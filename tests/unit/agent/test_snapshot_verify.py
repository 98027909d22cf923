"""Snapshot verification: hashes are trusted only while a file is provably untouched."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from nexus.agent.storage import snapshots


def _snapshot(d: Path, hashes: list[str]) -> None:
    d.mkdir()
    (d / "memory").write_bytes(os.urandom(64 * 1024))
    (d / "disk.img").write_bytes(b"\0" * 32 * 1024)
    files = snapshots._checksums(d)
    (d / "manifest.json").write_text(json.dumps({"id": d.name, "kind": "full", "files": files}))
    snapshots._remember_hashed(d, list(files))
    hashes.clear()


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = snapshots.sha256_file

    def counting(p: Path) -> str:
        seen.append(p.name)
        return real(p)

    monkeypatch.setattr(snapshots, "sha256_file", counting)
    return seen


def test_untouched_files_are_not_read_again(tmp_path: Path, hashes: list[str]) -> None:
    _snapshot(tmp_path / "s", hashes)
    assert snapshots.verify(tmp_path / "s")["id"] == "s"
    assert hashes == []
    snapshots.verify(tmp_path / "s", always=True)
    assert sorted(hashes) == ["disk.img", "memory"]


def test_a_same_size_rewrite_with_the_old_mtime_is_caught(
    tmp_path: Path, hashes: list[str]
) -> None:
    d = tmp_path / "s"
    _snapshot(d, hashes)
    st = (d / "memory").stat()
    time.sleep(0.05)  # past a coarse timestamp tick (kernels without multigrain ctime)
    with open(d / "memory", "r+b") as fh:
        fh.seek(4096)
        fh.write(b"garbage!")
    os.utime(d / "memory", ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime moved
    with pytest.raises(snapshots.SnapshotCorrupt, match="checksum mismatch in memory"):
        snapshots.verify(d)
    assert hashes == ["memory"]


def test_a_copied_snapshot_is_hashed_once_then_trusted(tmp_path: Path, hashes: list[str]) -> None:
    import shutil

    _snapshot(tmp_path / "s", hashes)
    shutil.copytree(tmp_path / "s", tmp_path / "t")  # new inodes: the record does not apply
    snapshots.verify(tmp_path / "t")
    assert sorted(hashes) == ["disk.img", "memory"]
    hashes.clear()
    snapshots.verify(tmp_path / "t")
    assert hashes == []


def test_a_missing_or_garbled_record_means_hashing(tmp_path: Path, hashes: list[str]) -> None:
    d = tmp_path / "s"
    _snapshot(d, hashes)
    (d / ".hashed.json").write_text("{not json")
    snapshots.verify(d)
    assert sorted(hashes) == ["disk.img", "memory"]
