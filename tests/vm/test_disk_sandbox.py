"""A hostile guest against its disks and its VMM, on real QEMU guests (issue 11: 1 and 3).

One VM of the default image (it has the guest agent, so the test can run commands inside)
boots twice: the guest writes a qcow2 header whose backing file is a root-only host secret
onto its raw volume, the VM is stopped and started, and the guest must still read its own
bytes. The same VM's QEMU is checked for its sandbox: its own non-root uid, seccomp, its own
cgroup with the limits set, and no access to another VM's disk.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nexus.agent.runtime import AgentRuntime, wait_for
from nexus.agent.storage.volumes import ensure_volume, volume_path
from nexus.agent.vmm.qemu import QemuDriver
from nexus.agent.vmm.sandbox import detect_cgroups, parse_uid_range
from nexus.images.build import BuiltImage

from .conftest import spec_for

pytestmark = pytest.mark.vm
SECRET = b"HOST-SECRET-" + b"0123456789abcdef" * 64


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


async def _exec(rt: AgentRuntime, vm_id: str, argv: list[str], stdin: bytes = b"") -> bytes:
    client = await rt.guests.client(vm_id, timeout=30)
    res = await client.exec(argv, stdin=stdin, timeout_s=60)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return res.stdout


async def test_guest_qcow2_header_on_its_volume_stays_its_own_bytes_and_qemu_is_sandboxed(
    runtime: AgentRuntime, default_image: BuiltImage, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    header = tmp_path / "header.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret),
                    str(header), "64M"], check=True)  # fmt: skip
    hdr = header.read_bytes()
    assert hdr[:4] == b"QFI\xfb" and str(secret).encode() in hdr

    vol = volume_path(runtime.settings.state_dir, "vol-evil")
    ensure_volume(vol, 64, "raw")
    spec = spec_for(default_image, "vm-evil", memory_mib=256, volumes=[{"id": "vol-evil"}])
    await runtime.put_vm(spec)
    await runtime.put_vm(spec_for(default_image, "vm-other"))  # never booted: just its disk
    st = await runtime.start_vm("vm-evil")
    assert st.state == "running", st.error
    assert await wait_for(lambda: runtime.status("vm-evil").guest_ready, 90)

    # the guest writes the header onto its raw volume (as issue 11 reproduced it with dd)
    await _exec(runtime, "vm-evil", ["sh", "-c", "dd of=/dev/vdb bs=64k conv=fsync 2>/dev/null"],
                stdin=hdr)  # fmt: skip
    assert vol.read_bytes()[: len(hdr)] == hdr

    assert (await runtime.stop_vm("vm-evil")).state == "stopped"
    st = await runtime.start_vm("vm-evil")
    assert st.state == "running", st.error
    assert await wait_for(lambda: runtime.status("vm-evil").guest_ready, 90)
    seen = await _exec(runtime, "vm-evil", ["sh", "-c", f"head -c {len(hdr)} /dev/vdb"])
    assert seen == hdr  # its own bytes, header included
    assert b"HOST-SECRET" not in seen
    size = await _exec(runtime, "vm-evil", ["cat", "/sys/block/vdb/size"])
    assert int(size) * 512 == 64 * 1024 * 1024  # the raw file's size, not the header's 64M

    # --- the QEMU of this VM is sandboxed --------------------------------------------------
    pid = runtime.status("vm-evil").pid
    assert pid is not None
    status = _status(pid)
    uid = int(status["Uid"].split()[0])
    assert uid in parse_uid_range(runtime.settings.vmm_uid_range)
    assert status["Uid"].split() == [str(uid)] * 4 and status["Gid"].split() == [str(uid)] * 4
    assert status["Groups"] == "" and status["NoNewPrivs"] == "1"
    assert status["CapEff"] == "0000000000000000" and status["CapBnd"] == "0000000000000000"
    assert status["Seccomp"] == "2"  # QEMU's -sandbox filter

    layout = detect_cgroups(parent=runtime.settings.vmm_cgroup_parent)
    assert layout is not None
    assert pid in layout.members("vm-evil")
    cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    mem = (256 + runtime.settings.vmm_memory_overhead_mib) * 1024 * 1024
    if layout.version == 1:
        for ctl in ("memory", "cpu", "pids"):
            assert f"{ctl}:/nexus/vm-evil\n" in cgroups or f",{ctl}:/nexus/vm-evil\n" in cgroups
        root = layout.root
        assert int((root / "memory/nexus/vm-evil/memory.limit_in_bytes").read_text()) == mem
        assert (root / "cpu/nexus/vm-evil/cpu.cfs_quota_us").read_text().strip() == "100000"
        assert (root / "pids/nexus/vm-evil/pids.max").read_text().strip() == str(
            runtime.settings.vmm_pids_max
        )
    else:
        assert "0::/nexus/vm-evil\n" in cgroups
        d = layout.root / "nexus" / "vm-evil"
        assert int((d / "memory.max").read_text()) == mem
        assert (d / "cpu.max").read_text().split() == ["100000", "100000"]

    # as that uid: no other VM's disk, no image file, no volume, no host secret
    other = runtime.vms_dir / "vm-other" / "disk.img"
    assert other.is_file()
    for path in (other, secret, vol, runtime.vms_dir / "vm-evil" / "spec.json"):
        probe = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
             "dd", f"if={path}", "of=/dev/null", "count=1"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert probe.returncode != 0 and "Permission denied" in probe.stderr, (path, probe)

    # the uid and the cgroup are the VM's own: the other VM gets another uid; delete frees
    driver = runtime.driver
    assert isinstance(driver, QemuDriver)
    other_owner = driver.vmm_owner(runtime.vms_dir / "vm-other")
    assert other_owner is not None and other_owner[0] != uid
    await runtime.delete_vm("vm-evil")
    assert not (layout.dirs("vm-evil")[0]).exists()
