"""The agent image cache against the real manager app (httpx ASGITransport): download +
verify + reuse, a corrupted file on the manager, Range resume, one download for concurrent
creations, leftovers of a crashed download, and ``auto`` reading a readable source_dir."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.agent.runtime import AgentRuntime, ImageUnavailable, VmInvalid
from nexus.agent.storage.disks import backing_file
from nexus.agent.storage.imagecache import (
    ImageCache,
    ImageFetchError,
    ImageMissing,
    ImageRejected,
)
from nexus.agent.vmm.base import DriverCapabilities
from nexus.core.settings import Settings
from nexus.hostapi.models import ImageRef, VmSpec
from nexus.manager import migrate
from nexus.manager.app import create_app
from nexus.manager.features.images.models import Image
from nexus.manager.features.images.service import manifest_of

from .conftest import SleepDriver

ADMIN_PW = "cache-admin-pw-1"
BASE = "http://manager.test"


@dataclass
class Creds:
    manager_url: str
    host_id: str
    host_token: str


@dataclass
class Manager:
    """A running manager app, a registered host and an imported image."""

    app: Any
    transport: httpx.ASGITransport
    creds: Creds
    ref: ImageRef  # what the manager sends agents (manifest_of)
    image_dir: Path  # the manager's copy


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    migrate.upgrade_sync(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
async def manager(template_db: Path, tmp_path: Path) -> AsyncIterator[Manager]:
    db = tmp_path / "nexus.db"
    shutil.copy(template_db, db)
    db.chmod(0o600)  # the manager refuses a database others can read
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{db}",
        state_dir=tmp_path / "manager",
        cache_dir=tmp_path / "cache",
        embedded_agent=False,
        bootstrap_admin_password=ADMIN_PW,
        log_level="warning",
        rate_limit_auth="1000/minute",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
            r = await c.post("/v1/auth/login", json={"username": "admin", "password": ADMIN_PW})
            admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
            tok = (await c.post("/v1/hosts/join-tokens", headers=admin)).json()["token"]
            facts = {"hostname": "h", "driver": "qemu", "accel": "tcg", "vcpus": 1}
            facts |= {"memory_mib": 1024, "disk_free_mib": 1024, "version": "t"}
            r = await c.post(
                "/v1/hosts/register",
                json={
                    "join_token": tok,
                    "name": "remote",
                    "agent_url": "http://r:1",
                    "facts": facts,
                },
            )
            assert r.status_code == 200, r.text
            reg = r.json()
            src = tmp_path / "src"
            src.mkdir()
            (src / "vmlinuz").write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
            (src / "initrd.img").write_bytes(b"initrd" * 1000)
            # sparse with data in the middle: the cache must keep holes and the bytes
            subprocess.run(["mkfs.ext4", "-q", "-F", str(src / "rootfs.ext4"), "16M"], check=True)
            r = await c.post(
                "/v1/images",
                json={
                    "name": "tiny",
                    "kernel_path": str(src / "vmlinuz"),
                    "initrd_path": str(src / "initrd.img"),
                    "rootfs_path": str(src / "rootfs.ext4"),
                },
                headers=admin,
            )
            assert r.status_code == 201, r.text
            image_id = r.json()["id"]
        state = app.state.nexus
        async with state.db.sessionmaker() as s:
            img = await s.get(Image, image_id)
            assert img is not None
            ref = ImageRef.model_validate(manifest_of(img))
        yield Manager(
            app,
            transport,
            Creds(BASE, reg["host_id"], reg["host_token"]),
            ref,
            Path(ref.source_dir),
        )


def agent_settings(tmp_path: Path, fetch: str = "always") -> Settings:
    return Settings(state_dir=tmp_path / "agent", cache_dir=tmp_path / "cache", image_fetch=fetch)


def remote(ref: ImageRef, tmp_path: Path) -> ImageRef:
    """The ImageRef as a remote host sees it: source_dir is not on this machine."""
    return ref.model_copy(update={"source_dir": str(tmp_path / "elsewhere" / ref.id)})


def cache_for(
    m: Manager, tmp_path: Path, fetch: str = "always", transport: Any = None
) -> ImageCache:
    return ImageCache(
        agent_settings(tmp_path, fetch),
        credentials=lambda: m.creds,
        transport=transport or m.transport,
    )


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


async def test_download_verify_and_reuse(manager: Manager, tmp_path: Path) -> None:
    cache = cache_for(manager, tmp_path)
    d = await cache.ensure(manager.ref, "vmlinuz")
    assert d == tmp_path / "agent" / "images" / manager.ref.id
    assert sorted(p.name for p in d.iterdir()) == ["initrd.img", "rootfs.ext4", "vmlinuz"]
    assert sha(d / "vmlinuz") == manager.ref.kernel_sha256
    assert sha(d / "initrd.img") == manager.ref.initrd_sha256
    assert sha(d / "rootfs.ext4") == manager.ref.rootfs_sha256
    assert cache.downloads == 3
    # holes stay holes (mkfs.ext4 leaves most of the 16 MiB unwritten)
    st = (d / "rootfs.ext4").stat()
    assert st.st_size == 16 * 1024 * 1024 and st.st_blocks * 512 < st.st_size // 2
    mtimes = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    # reuse: the same object, and a new one (an agent restart), download nothing
    assert await cache.ensure(manager.ref, "vmlinuz") == d
    again = cache_for(manager, tmp_path)
    assert await again.ensure(manager.ref, "vmlinuz") == d
    assert again.local_dir(manager.ref, "vmlinuz") == d
    assert cache.downloads == 3 and again.downloads == 0
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == mtimes


async def test_corrupted_file_on_manager_fails_and_leaves_nothing(
    manager: Manager, tmp_path: Path
) -> None:
    # the manager's copy no longer matches the sha256 the catalogue (and the ImageRef) carry
    with (manager.image_dir / "rootfs.ext4").open("r+b") as fh:
        fh.seek(5000)
        fh.write(b"bit rot")
    cache = cache_for(manager, tmp_path, fetch="auto")
    ref = remote(manager.ref, tmp_path)
    with pytest.raises(ImageFetchError, match=r"rootfs\.ext4: sha256 mismatch") as exc:
        await cache.ensure(ref, "vmlinuz")
    assert not isinstance(exc.value, ImageMissing)
    d = cache.cache_dir(ref.id)
    assert not (d / "rootfs.ext4").exists()
    assert not list(d.glob(".*")), list(d.iterdir())  # no temporary file left
    # the files verified before it stay (they are correct); rootfs is fetched again next time
    assert sha(d / "vmlinuz") == ref.kernel_sha256


async def test_auto_with_readable_source_dir_does_not_download(
    manager: Manager, tmp_path: Path
) -> None:
    cache = cache_for(manager, tmp_path, fetch="auto")
    assert await cache.ensure(manager.ref, "vmlinuz") == manager.image_dir
    assert cache.local_dir(manager.ref, "vmlinuz") == manager.image_dir
    assert cache.downloads == 0
    assert not (tmp_path / "agent" / "images").exists()
    # ... but 'always' does, whatever source_dir says
    always = cache_for(manager, tmp_path, fetch="always")
    assert await always.ensure(manager.ref, "vmlinuz") != manager.image_dir
    assert always.downloads == 3


async def test_concurrent_creations_download_once(manager: Manager, tmp_path: Path) -> None:
    cache = cache_for(manager, tmp_path)
    dirs = await asyncio.gather(*(cache.ensure(manager.ref, "vmlinuz") for _ in range(4)))
    assert len(set(dirs)) == 1
    assert cache.downloads == 3


async def test_partial_download_of_a_crash_is_removed(manager: Manager, tmp_path: Path) -> None:
    cache = cache_for(manager, tmp_path)
    d = cache.cache_dir(manager.ref.id)
    d.mkdir(parents=True)
    (d / ".rootfs.ext4.dead.part").write_bytes(b"half")
    await cache.ensure(manager.ref, "vmlinuz")
    assert sorted(p.name for p in d.iterdir()) == ["initrd.img", "rootfs.ext4", "vmlinuz"]


class DropOnce(httpx.AsyncBaseTransport):
    """Client-side fault: the first rootfs response breaks after ``cut`` bytes."""

    def __init__(self, inner: httpx.AsyncBaseTransport, cut: int) -> None:
        self.inner = inner
        self.cut = cut
        self.requests: list[httpx.Request] = []
        self.dropped = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        resp = await self.inner.handle_async_request(request)
        if self.dropped or not request.url.path.endswith("rootfs.ext4"):
            return resp
        self.dropped = True
        body = await resp.aread()
        cut = self.cut

        class Broken(httpx.AsyncByteStream):
            async def __aiter__(self):  # type: ignore[no-untyped-def]
                yield body[:cut]
                raise httpx.ReadError("connection reset")

        return httpx.Response(resp.status_code, headers=resp.headers, stream=Broken())


async def test_dropped_connection_resumes_with_range(manager: Manager, tmp_path: Path) -> None:
    t = DropOnce(manager.transport, cut=3 * 1024 * 1024 + 17)
    cache = cache_for(manager, tmp_path, transport=t)
    d = await cache.ensure(manager.ref, "vmlinuz")
    assert t.dropped
    assert sha(d / "rootfs.ext4") == manager.ref.rootfs_sha256
    ranges = [r.headers.get("range") for r in t.requests if r.url.path.endswith("rootfs.ext4")]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:-1]) > 0  # resumed after what it had, not from zero


async def test_wrong_host_token_is_a_clear_error(manager: Manager, tmp_path: Path) -> None:
    bad = Creds(BASE, manager.creds.host_id, "stolen-or-stale")
    cache = ImageCache(
        agent_settings(tmp_path), credentials=lambda: bad, transport=manager.transport
    )
    with pytest.raises(ImageFetchError, match="HTTP 401"):
        await cache.ensure(manager.ref, "vmlinuz")
    assert not list(cache.cache_dir(manager.ref.id).iterdir())


class OverlaySleepDriver(SleepDriver):
    """The fake VMM, reading qcow2 like QEMU: root disks become overlays of the image."""

    @property
    def capabilities(self) -> DriverCapabilities:
        return DriverCapabilities(name=self.name, accel="tcg", qcow2=True)


async def test_runtime_put_vm_fetches_and_overlays_the_cached_rootfs(
    manager: Manager, tmp_path: Path
) -> None:
    """AgentRuntime.put_vm on a 'remote' host: the disk is made from the cached rootfs and
    the machine boots the cached kernel; a download that fails verification is a 502
    problem, an image the manager does not have a 422 (like a missing local image)."""
    rt = AgentRuntime(agent_settings(tmp_path, "auto"), driver=OverlaySleepDriver())
    rt.images = cache_for(manager, tmp_path, fetch="auto")
    await rt.startup()
    try:
        ref = remote(manager.ref, tmp_path)
        wrong = ref.model_copy(update={"rootfs_sha256": "0" * 64})
        with pytest.raises(ImageUnavailable, match=r"rootfs\.ext4: sha256 mismatch"):
            await rt.put_vm(VmSpec(id="vm-bad", image=wrong))
        assert not (rt.vms_dir / "vm-bad" / "disk.img").exists()
        with pytest.raises(VmInvalid, match="HTTP 404"):
            await rt.put_vm(VmSpec(id="vm-404", image=ref.model_copy(update={"id": "img_x"})))
        await rt.put_vm(VmSpec(id="vm-r", image=ref))
        d = rt.images.cache_dir(ref.id)
        assert sha(d / "rootfs.ext4") == ref.rootfs_sha256
        assert backing_file(rt.vms_dir / "vm-r" / "disk.img") == d / "rootfs.ext4"
        await rt.start_vm("vm-r")
        m = rt.driver.started[-1]  # type: ignore[attr-defined]
        assert m.kernel == d / "vmlinuz" and m.initrd == d / "initrd.img"
    finally:
        for vm_id in list(rt.vms):
            await rt.delete_vm(vm_id)
        await rt.shutdown()


async def test_fetched_rootfs_with_a_container_header_is_refused(
    manager: Manager, tmp_path: Path
) -> None:
    """A manager (or a path to it) serving a qcow2 as rootfs.ext4, with a matching SHA-256:
    the agent refuses it before any VMM sees it, and nothing is left in the cache."""
    rootfs = manager.image_dir / "rootfs.ext4"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw",
         str(rootfs), "16M"],
        check=True,
    )  # fmt: skip
    ref = remote(manager.ref, tmp_path).model_copy(update={"rootfs_sha256": sha(rootfs)})
    cache = cache_for(manager, tmp_path, fetch="auto")
    with pytest.raises(ImageRejected, match=r"rootfs\.ext4: found a qcow2"):
        await cache.ensure(ref, "vmlinuz")
    d = cache.cache_dir(ref.id)
    assert not (d / "rootfs.ext4").exists()
    assert not list(d.glob(".*")), list(d.iterdir())


async def test_a_read_only_data_disk_fetches_its_rootfs_only(
    manager: Manager, tmp_path: Path
) -> None:
    # VmSpec.image_disks (a container image's disk): rootfs.ext4 only, sha256-verified
    cache = cache_for(manager, tmp_path, fetch="auto")
    ref = remote(manager.ref, tmp_path).model_copy(update={"initrd_sha256": None})
    d = await cache.ensure(ref, "")
    assert cache.downloads == 1 and sha(d / "rootfs.ext4") == ref.rootfs_sha256
    assert not (d / "vmlinuz").exists() and cache.local_dir(ref, "") == d
