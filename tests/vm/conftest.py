"""Real-guest fixtures: images built once and cached in ``NEXUS_TEST_CACHE_DIR``.

Guests run under QEMU (TCG on this kind of host: 2-4 s per boot), so tests share images
and boot as few VMs as they can. Any QEMU a test leaves behind is killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nexus.agent.runtime import AgentRuntime
from nexus.agent.vmm.qemu import QemuDriver
from nexus.core.settings import Settings
from nexus.hostapi.models import ImageRef, VmSpec
from nexus.images.build import BuiltImage, build_image
from tests.support.aio import qemu_pids_under

CACHE_DIR = Path(os.environ.get("NEXUS_TEST_CACHE_DIR", "/var/cache/nexus-test"))


@pytest.fixture(scope="session")
def test_image() -> BuiltImage:
    """The busybox-only test image (seconds to build; cached)."""
    return build_image("test", CACHE_DIR)


@pytest.fixture(scope="session")
def default_image() -> BuiltImage:
    """The debootstrap default image (about a minute the first time; cached)."""
    return build_image("default", CACHE_DIR)


def spec_for(image: BuiltImage, vm_id: str, **kw: object) -> VmSpec:
    """A VmSpec booting ``image``."""
    m = image.manifest
    ref = ImageRef(
        id=f"img-{image.name}",
        kernel_sha256=str(m["kernel_sha256"]),
        initrd_sha256=str(m["initrd_sha256"]),
        rootfs_sha256=str(m["rootfs_sha256"]),
        source_dir=str(image.dir),
    )
    kw.setdefault("memory_mib", 128)
    return VmSpec(id=vm_id, name=vm_id, image=ref, **kw)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Agent settings in a private state dir."""
    return Settings(
        state_dir=tmp_path / "state",
        cache_dir=CACHE_DIR,
        stop_timeout_s=15,
        guest_ready_timeout_s=60,
        accel="auto",
    )


@pytest.fixture(autouse=True)
def _no_leftover_qemu(tmp_path: Path) -> Iterator[None]:
    yield
    for pid in qemu_pids_under(tmp_path):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[AgentRuntime]:
    """A started runtime on the QEMU driver; VMs are deleted afterwards."""
    rt = AgentRuntime(settings, driver=QemuDriver(accel=settings.accel))
    await rt.startup()
    yield rt
    for vm_id in list(rt.vms):
        await rt.delete_vm(vm_id)
    await rt.shutdown()


def _nexus_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {
        line.split(":")[1].strip().split("@")[0]
        for line in out.splitlines()
        if line.split(":")[1].strip().startswith(("nxb-", "nxt-"))
    }


def _nexus_table() -> bool:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return "inet nexus" in out or "bridge nexus" in out  # (bridge: per-tap anti-spoofing)


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_network_state() -> Iterator[None]:
    """Tests whose manager is stopped with VMs still running (or killed) must not leave
    bridges, taps or the nftables table behind on the host: remove what this module made.
    (Per module: a stopped manager's network keeps its NAT rule for its subnet, and the next
    module's manager uses the same default subnet: that rule would masquerade its guests'
    traffic to each other.)"""
    links_before, table_before = _nexus_links(), _nexus_table()
    yield
    for name in sorted(_nexus_links() - links_before, reverse=True):  # taps before bridges
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    if not table_before and _nexus_table():
        for family in ("inet", "bridge"):
            subprocess.run(["nft", "delete", "table", family, "nexus"], capture_output=True)


def _vmm_cgroups() -> set[Path]:
    return {d for c in ("memory", "cpu", "pids", "")
            for d in Path("/sys/fs/cgroup", c, "nexus").glob("*") if d.is_dir()}  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_vmm_cgroups() -> Iterator[None]:
    """VMMs killed by a test (or by the fixture above) leave their per-VM cgroup behind:
    remove the empty ones this session made."""
    before = _vmm_cgroups()
    yield
    for d in sorted(_vmm_cgroups() - before):
        with contextlib.suppress(OSError):
            d.rmdir()
