"""The VMM sandbox pieces without a guest: uid allocation, cgroup layouts (a fake v2 tree
and this host's real v1 tree), the privilege-dropping wrapper, and file-system tools that
never run as root on tenant data."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from nexus.agent.storage.volumes import ensure_volume
from nexus.agent.vmm.sandbox import (
    CgroupLayout,
    Limits,
    SandboxError,
    VmIds,
    allocate_ids,
    detect_cgroups,
    limits_for,
    parse_uid_range,
    read_ids,
    run_on_file,
    tool_ids,
    unwrap_argv,
    wrap_argv,
)

ROOT = os.geteuid() == 0


def test_uid_range_parsing_refuses_root_and_nonsense() -> None:
    assert parse_uid_range("64100-65099") == range(64100, 65100)
    for bad in ("0-10", "10-5", "abc", "5", "-1-4"):
        with pytest.raises(ValueError):
            parse_uid_range(bad)


def test_uids_are_per_vm_recorded_reused_and_freed(tmp_path: Path) -> None:
    uids = range(5000, 5003)  # 5000 is the tools' uid: VMs get 5001 and 5002
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for d in (a, b, c):
        d.mkdir()
    ida, idb = allocate_ids(a, uids), allocate_ids(b, uids)
    assert (ida, idb) == (VmIds(5001, 5001), VmIds(5002, 5002))
    assert allocate_ids(a, uids) == ida == read_ids(a)  # re-adoption keeps it
    assert oct((a / "sandbox.json").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(SandboxError):
        allocate_ids(c, uids)  # range exhausted
    (a / "sandbox.json").unlink()  # the VM dir is deleted -> its uid is free again
    assert allocate_ids(c, uids) == VmIds(5001, 5001)
    assert tool_ids("5000-5002") == VmIds(5000, 5000)


def _fake_v2(root: Path) -> Path:
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("")
    return root


def test_cgroup_v2_layout_on_a_fake_tree(tmp_path: Path) -> None:
    root = _fake_v2(tmp_path / "cg")
    layout = detect_cgroups(root, parent="nexus")
    assert layout == CgroupLayout(2, root, "nexus")
    d = layout.create("vm-1", limits_for(256, 2, 192, 300))[0]
    assert d == root / "nexus" / "vm-1"
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (root / "nexus" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert int((d / "memory.max").read_text()) == (256 + 192) * 2**20
    assert (d / "cpu.max").read_text() == "200000 100000"
    assert (d / "pids.max").read_text() == "300"
    assert layout.procs_files("vm-1") == [d / "cgroup.procs"]
    for f in d.iterdir():  # a real cgroupfs removes its files with the directory
        f.unlink()
    layout.remove("vm-1")
    assert not d.exists()
    layout.remove("vm-1")  # idempotent


def test_cgroup_detection_needs_the_three_controllers(tmp_path: Path) -> None:
    root = _fake_v2(tmp_path / "cg")
    (root / "cgroup.controllers").write_text("cpu io\n")
    assert detect_cgroups(root) is None
    v1 = tmp_path / "v1"
    for ctl in ("memory", "cpu", "pids"):
        (v1 / ctl).mkdir(parents=True)
        (v1 / ctl / "cgroup.procs").write_text("")
    assert detect_cgroups(v1) == CgroupLayout(1, v1, "nexus")


@pytest.mark.skipif(
    not ROOT or not Path("/sys/fs/cgroup/memory/cgroup.procs").exists(), reason="root + cgroup v1"
)
def test_cgroup_v1_layout_on_this_host() -> None:
    layout = detect_cgroups(parent="nexus-unit-test")
    assert layout is not None and layout.version == 1
    dirs = layout.create("vm-unit", Limits(300 * 2**20, 1, 64))
    try:
        mem, cpu, pids = dirs
        assert int((mem / "memory.limit_in_bytes").read_text()) == 300 * 2**20
        assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "100000"
        assert (pids / "pids.max").read_text().strip() == "64"
        # the wrapper joins them before exec and drops to the VM's uid
        argv = wrap_argv(["cat", "/proc/self/cgroup", "/proc/self/status"], VmIds(64999, 64999),
                         layout.procs_files("vm-unit"))  # fmt: skip
        assert unwrap_argv(argv) == ["cat", "/proc/self/cgroup", "/proc/self/status"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for ctl in ("memory", "pids"):
            assert f"{ctl}:/nexus-unit-test/vm-unit\n" in out
        assert "Uid:\t64999\t64999\t64999\t64999" in out and "NoNewPrivs:\t1" in out
        assert "CapEff:\t0000000000000000" in out
    finally:
        layout.remove("vm-unit")
        for ctl in ("memory", "cpu", "pids"):
            (layout.root / ctl / "nexus-unit-test").rmdir()
    assert not any(d.exists() for d in dirs)


@pytest.mark.skipif(not ROOT, reason="needs root to change uid")
def test_tools_run_unprivileged_on_only_that_file(tmp_path: Path) -> None:
    disk = tmp_path / "private" / "vol.img"
    disk.parent.mkdir(mode=0o700)
    disk.write_bytes(b"guest data")
    disk.chmod(0o640)
    ids = VmIds(64998, 64998)
    res = run_on_file(
        lambda name: ["sh", "-c", 'id -u; id -G; head -c 5 "$0"; ls "$1" 2>&1', name,
                      str(disk.parent)], disk, ids=ids)  # fmt: skip
    lines = res.stdout.splitlines()
    assert lines[0] == "64998" and lines[1] == "64998"  # no supplementary groups (no root)
    assert lines[2].startswith("guest") and "Permission denied" in res.stdout
    st = disk.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o640)  # given back


@pytest.mark.skipif(not ROOT, reason="needs root to change uid")
def test_volume_growth_never_runs_fs_tools_as_root(tmp_path: Path) -> None:
    """e2fsck/resize2fs/mkfs on a volume a guest wrote run as the unprivileged tools uid."""
    # wrappers that log their uid, where an unprivileged uid can execute them
    bindir = Path(tempfile.mkdtemp(prefix="nexus-fake-tools-"))
    try:
        bindir.chmod(0o755)
        log = bindir / "uids.log"
        log.touch()
        log.chmod(0o666)
        for tool in ("mkfs.ext4", "e2fsck", "resize2fs"):
            real = shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
            script = f'#!/bin/sh\necho "{tool} $(id -u)" >> {log}\nexec {real} "$@"\n'
            (bindir / tool).write_text(script)
            (bindir / tool).chmod(0o755)
        old = os.environ["PATH"]
        os.environ["PATH"] = f"{bindir}:{old}"
        try:
            vol = tmp_path / "vols" / "v.img"
            assert ensure_volume(vol, 8, "ext4") == 8
            assert ensure_volume(vol, 16, "ext4") == 16
        finally:
            os.environ["PATH"] = old
        calls = log.read_text().splitlines()
    finally:
        shutil.rmtree(bindir)
    assert [c.split()[0] for c in calls] == ["mkfs.ext4", "e2fsck", "resize2fs"]
    assert all(c.split()[1] != "0" for c in calls), calls
    assert vol.stat().st_size == 16 * 2**20 and vol.stat().st_uid == 0
    fsck = subprocess.run(["e2fsck", "-fn", str(vol)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
