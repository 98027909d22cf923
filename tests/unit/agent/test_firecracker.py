"""Firecracker driver against a fake Firecracker that validates every request against the
official API spec (firecracker-api.yaml) and records the exact sequence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus.agent.vmm import select_driver
from nexus.agent.vmm.base import DiskSpec, MachineSpec, NicSpec, VmmError, VmmHandle
from nexus.agent.vmm.firecracker import FirecrackerDriver, fc_instance_id
from nexus.core.settings import Settings

HERE = Path(__file__).resolve().parent
SPEC = Path(__file__).resolve().parents[4] / "shared" / "firecracker" / "firecracker-api.yaml"
if not SPEC.exists():  # CI runs from a clone with shared/ beside it
    SPEC = Path(
        os.environ.get("NEXUS_TEST_FC_SPEC", "/work/shared/firecracker/firecracker-api.yaml")
    )


@pytest.fixture
def fake_fc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``firecracker`` executable on PATH that runs the validating fake."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "firecracker"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE / "fake_firecracker.py"} "$@"\n')
    exe.chmod(0o755)
    log = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_FC_SPEC", str(SPEC))
    monkeypatch.setenv("FAKE_FC_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return log


def requests(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def machine(tmp_path: Path) -> MachineSpec:
    for name in ("vmlinux", "initrd.img", "disk.img"):
        (tmp_path / name).write_bytes(b"x")
    return MachineSpec(
        vm_id="vm1",
        vcpus=2,
        memory_mib=256,
        kernel=tmp_path / "vmlinux",
        initrd=tmp_path / "initrd.img",
        root_disk=tmp_path / "disk.img",
        kernel_args="nexus.hostname=vm1",
        nics=(NicSpec("eth0", "tap-vm1", "52:54:00:00:00:01"),),
    )


async def test_spec_is_the_official_one() -> None:
    assert SPEC.exists(), SPEC
    assert "Firecracker API" in SPEC.read_text()[:200]


async def test_full_lifecycle_conforms_to_api(fake_fc: Path, tmp_path: Path) -> None:
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    drv = FirecrackerDriver()
    assert not drv.capabilities.tested_with_real_guests
    h = await drv.start(machine(tmp_path), vm_dir)
    assert drv.is_alive(h)
    assert "NEXUS-GUEST-BOOTED" in (vm_dir / "console.log").read_text()
    await drv.pause(h)
    assert await drv.status(h) == "paused"
    await drv.resume(h)
    assert await drv.status(h) == "running"
    snap = tmp_path / "snap"
    await drv.snapshot(h, snap)
    assert (snap / "vmstate").exists() and (snap / "memory").exists()
    await drv.stop(h, graceful=True, timeout=5)
    assert not drv.is_alive(h)

    reqs = requests(fake_fc)
    assert [r["error"] for r in reqs] == [None] * len(reqs), reqs
    seq = [(r["method"], r["path"]) for r in reqs]
    assert seq == [
        ("PUT", "/machine-config"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/rootfs"),
        ("PUT", "/network-interfaces/eth0"),
        ("PUT", "/vsock"),
        ("PUT", "/actions"),
        ("PATCH", "/vm"),
        ("GET", "/"),
        ("PATCH", "/vm"),
        ("GET", "/"),
        ("PATCH", "/vm"),
        ("PUT", "/snapshot/create"),
        ("GET", "/"),  # stop: paused? -> resume first
        ("PATCH", "/vm"),
        ("PUT", "/actions"),
    ]
    bodies = [r["body"] for r in reqs]
    assert bodies[0] == {"vcpu_count": 2, "mem_size_mib": 256}
    assert bodies[1]["kernel_image_path"].endswith("vmlinux")
    assert "nexus.root=/dev/vda" in bodies[1]["boot_args"]
    assert bodies[2]["path_on_host"].endswith("disk.img")
    assert bodies[3] == {
        "iface_id": "eth0",
        "host_dev_name": "tap-vm1",
        "guest_mac": "52:54:00:00:00:01",
    }
    assert bodies[4] == {"guest_cid": 3, "uds_path": str(vm_dir / "guest.sock")}
    assert bodies[5] == {"action_type": "InstanceStart"}
    assert bodies[6] == {"state": "Paused"}
    assert bodies[8] == {"state": "Resumed"}
    assert bodies[11]["snapshot_type"] == "Full"
    assert bodies[-1] == {"action_type": "SendCtrlAltDel"}


async def test_restore_conforms(fake_fc: Path, tmp_path: Path) -> None:
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    snap = tmp_path / "snap"
    snap.mkdir()
    drv = FirecrackerDriver()
    h = await drv.restore(machine(tmp_path), vm_dir, snap)
    try:
        assert await drv.status(h) == "running"
    finally:
        await drv.kill(h)
    reqs = requests(fake_fc)
    assert next((r["method"], r["path"], r["error"]) for r in reqs) == (
        "PUT",
        "/snapshot/load",
        None,
    )
    assert reqs[0]["body"]["mem_backend"]["backend_type"] == "File"


async def test_fake_rejects_nonconforming_requests(fake_fc: Path, tmp_path: Path) -> None:
    """The validator is real: a body outside the spec is refused with fault_message."""
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    drv = FirecrackerDriver()
    h = await drv._spawn(machine(tmp_path), vm_dir)
    try:
        with pytest.raises(VmmError, match="400"):
            await drv.api(vm_dir, "PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 1})
        with pytest.raises(VmmError, match="400"):
            await drv.api(vm_dir, "PUT", "/machine-config", {"vcpus": 1, "mem_size_mib": 128})
        with pytest.raises(VmmError, match="400"):
            await drv.api(vm_dir, "PATCH", "/vm", {"state": "Frozen"})
        with pytest.raises(VmmError, match="400"):
            await drv.api(vm_dir, "POST", "/actions", {"action_type": "InstanceStart"})
    finally:
        await drv.kill(h)
    assert all(r["error"] for r in requests(fake_fc))


async def test_select_driver_prefers_firecracker_on_path(fake_fc: Path) -> None:
    assert select_driver(Settings(vmm_driver="auto")).name == "firecracker"
    assert select_driver(Settings(vmm_driver="qemu")).name == "qemu"


async def test_select_driver_falls_back_to_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert select_driver(Settings(vmm_driver="auto")).name == "qemu"
    with pytest.raises(VmmError, match="not on PATH"):
        select_driver(Settings(vmm_driver="firecracker"))


async def test_jailer_argv(tmp_path: Path) -> None:
    drv = FirecrackerDriver(
        "/opt/fc/firecracker", jailer="/opt/fc/jailer", jailer_uid=123, jailer_gid=100
    )
    spec = machine(tmp_path)
    argv = drv.build_argv(spec, tmp_path)
    mem = (spec.memory_mib + 192) * 2**20
    assert argv == [
        "/opt/fc/jailer", "--id", "vm1", "--exec-file", "/opt/fc/firecracker",
        "--uid", "123", "--gid", "100", "--chroot-base-dir", str(tmp_path / "jail"),
        "--cgroup-version", "2", "--parent-cgroup", "nexus",
        "--cgroup", f"memory.max={mem}",
        "--cgroup", f"cpu.max={spec.vcpus * 100000}", "--cgroup", "pids.max=256",
        "--", "--api-sock", "/api.sock",
    ]  # fmt: skip
    assert drv.chroot_dir(tmp_path, "vm1") == tmp_path / "jail" / "firecracker" / "vm1" / "root"


# --- jailer --------------------------------------------------------------------------------

JAIL_UID, JAIL_GID = 64000, 64001


@pytest.fixture
def fake_jailer(fake_fc: Path, tmp_path: Path) -> Path:
    """A ``jailer`` executable on PATH (next to the fake ``firecracker``)."""
    exe = tmp_path / "bin" / "jailer"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE / "fake_jailer.py"} "$@"\n')
    exe.chmod(0o755)
    return exe


def jailed_machine(tmp_path: Path) -> MachineSpec:
    """A VM as the runtime builds it: disk in the VM dir, a volume, shared image files."""
    base = machine(tmp_path)
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir(exist_ok=True)
    (vm_dir / "disk.img").write_bytes(b"disk")
    vols = tmp_path / "volumes"
    vols.mkdir(exist_ok=True)
    (vols / "a.img").write_bytes(b"vol a")
    (vols / "b.img").write_bytes(b"vol b")
    return MachineSpec(
        vm_id="vm_01jabc",  # an id with "_" as Nexus makes them: invalid for Firecracker
        vcpus=base.vcpus,
        memory_mib=base.memory_mib,
        kernel=base.kernel,
        initrd=base.initrd,
        root_disk=vm_dir / "disk.img",
        kernel_args=base.kernel_args,
        nics=base.nics,
        extra_disks=(DiskSpec(vols / "a.img"), DiskSpec(vols / "b.img", readonly=True)),
    )


def jail_driver() -> FirecrackerDriver:
    return FirecrackerDriver(jailer="jailer", jailer_uid=JAIL_UID, jailer_gid=JAIL_GID)


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


async def test_jailed_lifecycle_conforms_to_api_and_jailer(
    fake_jailer: Path, fake_fc: Path, tmp_path: Path
) -> None:
    vm_dir = tmp_path / "vm"
    spec = jailed_machine(tmp_path)
    drv = jail_driver()
    h = await drv.start(spec, vm_dir)
    root = vm_dir / "jail" / "firecracker" / "vm-01jabc" / "root"
    try:
        assert drv.is_alive(h)
        assert h.argv[0] == str(fake_jailer)
        assert h.extra["chroot"] == str(root)
        assert json.loads((vm_dir / "vmm.json").read_text())["extra"]["chroot"] == str(root)
        assert "NEXUS-GUEST-BOOTED" in (vm_dir / "console.log").read_text()
        # the jailer copied the exec-file into the chroot and chowned the root
        assert (root / "firecracker").is_file()
        assert owner(root) == (JAIL_UID, JAIL_GID)
        # VM-private files: hard links (same inode); shared image files: copies
        assert os.stat(root / "disk.img").st_ino == os.stat(spec.root_disk.path).st_ino
        assert os.stat(root / "vol0.img").st_ino == os.stat(spec.extra_disks[0].path).st_ino
        assert os.stat(root / "vol1.img").st_ino == os.stat(spec.extra_disks[1].path).st_ino
        for name, src in (("vmlinux", spec.kernel), ("initrd.img", spec.initrd)):
            assert src is not None
            assert os.stat(root / name).st_ino != os.stat(src).st_ino
            assert (root / name).read_bytes() == src.read_bytes()
            assert owner(src) == (0, 0)  # the shared image inode is never chowned
        for name in ("vmlinux", "initrd.img", "disk.img", "vol0.img", "vol1.img"):
            assert owner(root / name) == (JAIL_UID, JAIL_GID), name
        # the host reaches the jailed sockets through short symlinks in the VM dir
        assert (vm_dir / "api.sock").is_symlink()
        assert (vm_dir / "api.sock").resolve() == root / "api.sock"
        assert (vm_dir / "guest.sock").resolve() == root / "guest.sock"

        await drv.pause(h)
        assert await drv.status(h) == "paused"
        await drv.resume(h)
        snap = tmp_path / "snap"
        await drv.snapshot(h, snap)
        for name in ("vmstate", "memory"):
            assert (snap / name).read_text() == "fake"
            assert owner(snap / name) == (os.geteuid(), os.getegid())
            assert not (root / name).exists()
        await drv.stop(h, graceful=True, timeout=5)
        assert not drv.is_alive(h)
    finally:
        await drv.kill(h)

    reqs = requests(fake_fc)
    assert [r["error"] for r in reqs] == [None] * len(reqs), reqs
    bodies = {r["path"]: r["body"] for r in reqs if r["method"] == "PUT"}
    assert bodies["/boot-source"]["kernel_image_path"] == "/vmlinux"
    assert bodies["/boot-source"]["initrd_path"] == "/initrd.img"
    assert bodies["/drives/rootfs"]["path_on_host"] == "/disk.img"
    assert bodies["/drives/disk1"] == {
        "drive_id": "disk1",
        "path_on_host": "/vol0.img",
        "is_root_device": False,
        "is_read_only": False,
    }
    assert bodies["/drives/disk2"]["path_on_host"] == "/vol1.img"
    assert bodies["/drives/disk2"]["is_read_only"] is True
    assert bodies["/vsock"] == {"guest_cid": 3, "uds_path": "/guest.sock"}
    assert bodies["/snapshot/create"]["snapshot_path"] == "/vmstate"
    assert bodies["/snapshot/create"]["mem_file_path"] == "/memory"
    assert [(r["method"], r["path"]) for r in reqs][:8] == [
        ("PUT", "/machine-config"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/rootfs"),
        ("PUT", "/drives/disk1"),
        ("PUT", "/drives/disk2"),
        ("PUT", "/network-interfaces/eth0"),
        ("PUT", "/vsock"),
        ("PUT", "/actions"),
    ]

    drv.cleanup(vm_dir)
    assert not (vm_dir / "jail").exists()
    for name in ("api.sock", "guest.sock", "vmm.json"):
        assert not os.path.lexists(vm_dir / name), name
    # only the links went: the VM's disk and volumes are intact
    assert spec.root_disk is not None and spec.root_disk.path.read_bytes() == b"disk"
    assert [d.path.read_bytes() for d in spec.extra_disks] == [b"vol a", b"vol b"]


async def test_fake_jail_refuses_paths_outside_the_chroot(
    fake_jailer: Path, fake_fc: Path, tmp_path: Path
) -> None:
    """The fake's jail checks are real: host paths, escapes and wrong owners get 400."""
    vm_dir = tmp_path / "vm"
    spec = jailed_machine(tmp_path)
    drv = jail_driver()
    h = await drv._spawn(spec, vm_dir)
    root = Path(h.extra["chroot"])
    try:
        bad = [
            {"kernel_image_path": str(spec.kernel)},  # a host path: not in the jail
            {"kernel_image_path": "/../../../vmlinux"},  # escapes
            {"kernel_image_path": "vmlinux"},  # relative
        ]
        for body in bad:
            with pytest.raises(VmmError, match="jail"):
                await drv.api(vm_dir, "PUT", "/boot-source", body)
        os.chown(root / "vmlinux", 0, 0)
        with pytest.raises(VmmError, match="owned by 0:0"):
            await drv.api(vm_dir, "PUT", "/boot-source", {"kernel_image_path": "/vmlinux"})
        with pytest.raises(VmmError, match="parent directory"):
            await drv.api(vm_dir, "PUT", "/vsock", {"guest_cid": 3, "uds_path": "/run/g.sock"})
    finally:
        await drv.kill(h)
        drv.cleanup(vm_dir)


async def test_jailed_adopt_after_agent_restart(
    fake_jailer: Path, fake_fc: Path, tmp_path: Path
) -> None:
    vm_dir = tmp_path / "vm"
    h = await jail_driver().start(jailed_machine(tmp_path), vm_dir)
    try:
        (vm_dir / "api.sock").unlink()  # even a lost symlink is recovered from vmm.json
        fresh = jail_driver()
        adopted = await fresh.adopt(vm_dir)
        assert adopted is not None and adopted.pid == h.pid
        assert (vm_dir / "api.sock").is_symlink()
        assert await fresh.status(adopted) == "running"
        await fresh.pause(adopted)
        assert await fresh.status(adopted) == "paused"
    finally:
        await jail_driver().kill(h)
    jail_driver().cleanup(vm_dir)
    assert not (vm_dir / "jail").exists()


async def test_jailed_api_refuses_a_non_socket_in_the_chroot(
    fake_jailer: Path, fake_fc: Path, tmp_path: Path
) -> None:
    vm_dir = tmp_path / "vm"
    drv = jail_driver()
    h = await drv.start(jailed_machine(tmp_path), vm_dir)
    try:
        sock = Path(h.extra["api_sock"])
        sock.unlink()
        sock.symlink_to(tmp_path / "elsewhere.sock")  # what a compromised VMM could do
        with pytest.raises(VmmError, match="not a socket"):
            await drv.api(vm_dir, "GET", "/")
    finally:
        await drv.kill(h)
        drv.cleanup(vm_dir)


async def test_jailed_failed_configuration_removes_the_chroot(
    fake_jailer: Path, fake_fc: Path, tmp_path: Path
) -> None:
    vm_dir = tmp_path / "vm"
    spec = jailed_machine(tmp_path)
    bad = MachineSpec(**{**spec.__dict__, "vcpus": 0})  # refused by the spec (minimum 1)
    drv = jail_driver()
    with pytest.raises(VmmError, match="machine-config"):
        await drv.start(bad, vm_dir)
    h = VmmHandle.load(vm_dir)
    assert h is not None and not drv.is_alive(h)
    assert not (vm_dir / "jail").exists()
    assert not os.path.lexists(vm_dir / "api.sock")
    assert not os.path.lexists(vm_dir / "guest.sock")
    assert spec.root_disk is not None and spec.root_disk.path.read_bytes() == b"disk"


async def test_jailed_spawn_failure_removes_the_chroot(
    fake_jailer: Path, fake_fc: Path, tmp_path: Path
) -> None:
    """The jailer exits at once (missing exec-file): error with its output, no chroot."""
    vm_dir = tmp_path / "vm"
    drv = FirecrackerDriver(
        str(tmp_path / "nowhere" / "firecracker"), jailer="jailer", jailer_uid=JAIL_UID
    )
    with pytest.raises(VmmError, match="does not exist"):
        await drv.start(jailed_machine(tmp_path), vm_dir)
    assert not (vm_dir / "jail").exists()
    assert not os.path.lexists(vm_dir / "api.sock")


async def test_jailed_staging_refuses_a_disk_on_another_filesystem(
    fake_jailer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of the VM's disk would silently lose the guest's writes: refuse instead."""
    import errno

    def exdev(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", exdev)
    vm_dir = tmp_path / "vm"
    with pytest.raises(VmmError, match="another filesystem"):
        await jail_driver().start(jailed_machine(tmp_path), vm_dir)
    assert not (vm_dir / "jail").exists()


async def test_jailed_restore_conforms(fake_jailer: Path, fake_fc: Path, tmp_path: Path) -> None:
    vm_dir = tmp_path / "vm"
    spec = jailed_machine(tmp_path)
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "vmstate").write_bytes(b"state")
    (snap / "memory").write_bytes(b"mem")
    drv = jail_driver()
    h = await drv.restore(spec, vm_dir, snap)
    root = Path(h.extra["chroot"])
    try:
        assert await drv.status(h) == "running"
        for name in ("vmstate", "memory"):  # snapshots are shared: copied, never chowned
            assert os.stat(root / name).st_ino != os.stat(snap / name).st_ino
            assert owner(root / name) == (JAIL_UID, JAIL_GID)
            assert owner(snap / name) == (0, 0)
        assert os.stat(root / "disk.img").st_ino == os.stat(vm_dir / "disk.img").st_ino
    finally:
        await drv.kill(h)
    reqs = requests(fake_fc)
    assert (reqs[0]["method"], reqs[0]["path"], reqs[0]["error"]) == (
        "PUT",
        "/snapshot/load",
        None,
    )
    assert reqs[0]["body"] == {
        "snapshot_path": "/vmstate",
        "mem_backend": {"backend_type": "File", "backend_path": "/memory"},
        "vsock_override": {"uds_path": "/guest.sock"},
        "resume_vm": True,
    }
    drv.cleanup(vm_dir)
    assert not (vm_dir / "jail").exists()
    assert (snap / "memory").read_bytes() == b"mem"


async def test_jailed_restore_failure_removes_the_chroot(
    fake_jailer: Path, fake_fc: Path, tmp_path: Path
) -> None:
    """A snapshot without its memory file: nothing staged is left behind."""
    vm_dir = tmp_path / "vm"
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "vmstate").write_bytes(b"state")
    with pytest.raises(VmmError, match="stage"):
        await jail_driver().restore(jailed_machine(tmp_path), vm_dir, snap)
    assert not (vm_dir / "jail").exists()


def run_fake_jailer(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HERE / "fake_jailer.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


JAIL_ARGS = ["--id", "a", "--exec-file", "{fc}", "--uid", "1", "--gid", "1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (JAIL_ARGS[2:], "missing required argument --id"),
        (JAIL_ARGS[:4] + JAIL_ARGS[6:], "missing required argument --uid"),
        ([*JAIL_ARGS, "--bogus"], "unknown argument"),
        (["--id", "a_b", *JAIL_ARGS[2:]], "invalid instance id"),
        ([*JAIL_ARGS, "--uid", "2"], "more than once"),
        ([*JAIL_ARGS[:3], "{other}", *JAIL_ARGS[4:]], "'firecracker'"),
        ([*JAIL_ARGS, "--cgroup-version", "3"], "cgroup-version"),
        ([*JAIL_ARGS, "--chroot-base-dir", "{tmp}"], "was not prepared"),
        ([*JAIL_ARGS, "--chroot-base-dir", "{tmp}", "--", "--id", "a"], "passes --id"),
    ],
)
async def test_fake_jailer_parses_strictly(
    fake_jailer: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    other = tmp_path / "vmm"
    other.write_text("")
    subst = {"fc": str(tmp_path / "bin" / "firecracker"), "other": str(other), "tmp": str(tmp_path)}
    proc = run_fake_jailer(tmp_path, *[a.format(**subst) for a in args])
    assert proc.returncode == 1, proc
    assert message in proc.stderr


async def test_fake_firecracker_rejects_unknown_args(fake_fc: Path, tmp_path: Path) -> None:
    for argv in (
        ["--api-sock", str(tmp_path / "a.sock"), "--bogus"],
        ["--api-sock", str(tmp_path / "a.sock"), "--id", "vm_1"],  # "_": invalid id
        ["--api-sock", str(tmp_path / "a.sock"), "--id=a", "--id", "b"],
    ):
        proc = subprocess.run(
            [sys.executable, str(HERE / "fake_firecracker.py"), *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 1, (argv, proc)


def test_fc_instance_id() -> None:
    assert fc_instance_id("vm_01jd2k") == "vm-01jd2k"
    assert fc_instance_id("x" * 80) == "x" * 64
    with pytest.raises(VmmError):
        fc_instance_id("")


def test_jailer_settings_default_unprivileged_and_reach_the_driver(fake_fc: Path) -> None:
    s = Settings()
    assert (s.jailer_uid, s.jailer_gid) == (64000, 64000)
    with pytest.raises(ValueError):
        Settings(jailer_uid=0)
    with pytest.raises(ValueError):
        Settings(jailer_gid=0)
    drv = select_driver(
        Settings(vmm_driver="firecracker", jailer_bin="jailer", jailer_uid=1234, jailer_gid=99)
    )
    assert isinstance(drv, FirecrackerDriver)
    assert (drv.jailer_uid, drv.jailer_gid) == (1234, 99)
    with pytest.raises(VmmError, match="unprivileged"):
        FirecrackerDriver(jailer="jailer", jailer_uid=0)


def test_jailed_driver_asks_for_taps_owned_by_the_jail_user() -> None:
    jailed = FirecrackerDriver("/opt/fc/firecracker", jailer="/opt/fc/jailer", jailer_uid=64010,
                               jailer_gid=64011)  # fmt: skip
    assert jailed.capabilities.tap_owner == (64010, 64011)
    assert FirecrackerDriver("/opt/fc/firecracker").capabilities.tap_owner is None


async def test_jailer_gets_a_uid_per_vm_and_cgroup_limits(
    fake_jailer: Path, fake_fc: Path, tmp_path: Path
) -> None:
    """With a uid range every VM's Firecracker gets its own uid (recorded, kept on re-adoption,
    owning its taps and chroot), and the jailer gets --cgroup limits in the host's version;
    the fake jailer refuses cgroup files of the other version."""
    spec = jailed_machine(tmp_path)
    drv = FirecrackerDriver(jailer="jailer", uid_range=range(64500, 64510), cgroup_version=1)
    vm_dir = tmp_path / "vm"
    h = await drv.start(spec, vm_dir)
    try:
        assert drv.vmm_owner(vm_dir) == (64501, 64501)  # 64500 is the fs tools' uid
        root = vm_dir / "jail" / "firecracker" / "vm-01jabc" / "root"
        assert owner(root) == (64501, 64501) and owner(root / "disk.img") == (64501, 64501)
        argv = h.argv
        assert argv[argv.index("--uid") + 1] == "64501"
        assert argv[argv.index("--cgroup-version") + 1] == "1"
        cg = [argv[i + 1] for i, a in enumerate(argv) if a == "--cgroup"]
        assert f"memory.limit_in_bytes={(spec.memory_mib + 192) * 2**20}" in cg
        assert f"cpu.cfs_quota_us={spec.vcpus * 100000}" in cg and "pids.max=256" in cg
        other = tmp_path / "other"
        other.mkdir()
        assert drv.vmm_owner(other) == (64502, 64502)
        again = FirecrackerDriver(jailer="jailer", uid_range=range(64500, 64510))
        assert again.vmm_owner(vm_dir) == (64501, 64501)  # recorded: an agent restart keeps it
    finally:
        await drv.kill(h)
        drv.cleanup(vm_dir)
    wrong = subprocess.run(
        [str(fake_jailer), "--id", "x", "--exec-file", str(tmp_path / "bin" / "firecracker"),
         "--uid", "5", "--gid", "5",
         "--cgroup-version", "2", "--cgroup", "memory.limit_in_bytes=1", "--"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert wrong.returncode != 0 and "does not exist in cgroup v2" in wrong.stderr
    with pytest.raises(VmmError, match="raw disks only"):
        await drv.start(
            MachineSpec(
                **{
                    **spec.__dict__,
                    "root_disk": DiskSpec(spec.root_disk.path, "qcow2", backing=tmp_path / "base"),
                }
            ),  # type: ignore[union-attr]
            tmp_path / "vm3",
        )
