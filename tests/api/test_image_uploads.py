"""Image uploads and imports: raw ext4 by contract (disk containers and broken file systems
are refused with 422), authorization before any byte is read, a concurrent upload limit,
a free-space check, and the 413 of an oversized chunked body (issues 11 and 12)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.manager.features.images import upload as upload_mod
from tests.api.conftest import ADMIN_PASSWORD, UserMaker

KERNEL = b"\x7fELF" + bytes(range(256)) * 8
EXT4_MAGIC_AT = 1080
TEST_IMAGE_CACHE = Path("/var/cache/nexus-test/images")


def with_ext4_magic(path: Path, min_size: int = 4096) -> Path:
    """Pad to ``min_size`` and put the ext4 superblock magic at byte 1080: the only thing the
    old check looked at, so each refused file here passed it."""
    with path.open("r+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < min_size:
            f.write(b"\0" * (min_size - f.tell()))
        f.seek(EXT4_MAGIC_AT)
        f.write(b"\x53\xef")
    return path


def qemu_img(tmp: Path, fmt: str, *extra: str) -> Path:
    out = tmp / f"disk.{fmt}"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", fmt, *extra, str(out), "16M"],
        check=True,
        capture_output=True,
    )
    return out


def sample(kind: str, tmp: Path) -> Path:
    """A file of the named kind, with the ext4 magic at 1080."""
    if kind == "qcow2-backing":
        return with_ext4_magic(qemu_img(tmp, "qcow2", "-b", "/etc/hostname", "-F", "raw"))
    if kind in ("qed", "vmdk", "vhdx", "vpc", "vdi"):
        return with_ext4_magic(qemu_img(tmp, kind))
    if kind == "vmdk-descriptor":
        p = tmp / "desc.vmdk"
        p.write_text(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
            'createType="monolithicFlat"\n\n# Extent description\n'
            'RW 32768 FLAT "/etc/shadow" 0\n'
        )
        return with_ext4_magic(p)
    if kind == "luks":
        p = tmp / "disk.luks"
        p.write_bytes(b"LUKS\xba\xbe\x00\x01aes\0" + b"\0" * 8192)
        return with_ext4_magic(p)
    if kind == "corrupt-ext4":
        p = tmp / "corrupt.ext4"
        p.write_bytes(os.urandom(4 * 1024 * 1024))
        return with_ext4_magic(p)
    raise AssertionError(kind)


WHAT = {
    "qcow2-backing": "qcow2",
    "qed": "QED",
    "vmdk": "VMDK",
    "vmdk-descriptor": "VMDK descriptor",
    "vhdx": "VHDX",
    "vpc": "VHD",
    "vdi": "VDI",
    "luks": "LUKS",
    "corrupt-ext4": "e2fsck",
}


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], rootfs: Path, name: str = "up"
) -> httpx.Response:
    return await client.post(
        "/v1/images/upload",
        data={"name": name},
        files={"kernel": ("vmlinuz", KERNEL), "rootfs": ("rootfs.ext4", rootfs.read_bytes())},
        headers=headers,
    )


def leftovers(client: httpx.AsyncClient) -> list[str]:
    d = client.app.state.nexus.settings.state_dir / "images"  # type: ignore[attr-defined]
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.mark.parametrize("kind", list(WHAT))
async def test_upload_refuses_containers_and_broken_file_systems(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path, kind: str
) -> None:
    r = await upload(client, admin, sample(kind, tmp_path))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert WHAT[kind] in r.json()["detail"], r.json()["detail"]
    assert leftovers(client) == []


@pytest.mark.parametrize("kind", ["qcow2-backing", "vmdk", "luks", "corrupt-ext4"])
async def test_import_refuses_containers_and_broken_file_systems(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path, kind: str
) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(KERNEL)
    r = await client.post(
        "/v1/images",
        json={
            "name": "imp",
            "kernel_path": str(kernel),
            "rootfs_path": str(sample(kind, tmp_path)),
        },
        headers=admin,
    )
    assert r.status_code == 422, r.text
    assert WHAT[kind] in r.json()["detail"]
    assert leftovers(client) == []


async def test_clean_ext4_upload_still_works(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path
) -> None:
    rootfs = tmp_path / "ok.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(rootfs), "8M"], check=True)
    r = await upload(client, admin, rootfs)
    assert r.status_code == 201, r.text
    assert r.json()["public"] is False
    # the unprivileged e2fsck's group no longer owns the checked file
    state: Any = client.app.state.nexus  # type: ignore[attr-defined]
    st = (state.settings.state_dir / "images" / r.json()["id"] / "rootfs.ext4").stat()
    assert st.st_gid != state.settings.image_check_uid
    assert st.st_gid == os.getgid()
    # a private image is private on disk too (issue 12: were 0644 files in 0755 directories)
    image_dir = state.settings.state_dir / "images" / r.json()["id"]
    assert stat.S_IMODE(image_dir.stat().st_mode) == 0o700
    for f in image_dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f


async def test_kernel_that_is_not_a_kernel_is_refused(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path
) -> None:
    rootfs = tmp_path / "ok.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(rootfs), "8M"], check=True)
    r = await client.post(
        "/v1/images/upload",
        data={"name": "k"},
        files={"kernel": ("vmlinuz", b"MZ" + b"\0" * 4096), "rootfs": ("r", rootfs.read_bytes())},
        headers=admin,
    )
    assert r.status_code == 422 and "not a Linux kernel" in r.json()["detail"], r.text


@pytest.mark.skipif(not TEST_IMAGE_CACHE.is_dir(), reason="no built test image cached")
async def test_the_real_built_test_image_still_imports(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    built = sorted(TEST_IMAGE_CACHE.glob("test-*/manifest.json"))
    if not built:
        pytest.skip("no built test image cached")
    d = built[0].parent
    r = await client.post(
        "/v1/images",
        json={
            "name": "real-test",
            "kernel_path": str(d / "vmlinuz"),
            "initrd_path": str(d / "initrd.img"),
            "rootfs_path": str(d / "rootfs.ext4"),
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    # the source file in the shared build cache was not re-owned or re-moded
    st = (d / "rootfs.ext4").stat()
    assert r.json()["rootfs_size_mib"] == st.st_size // (1024 * 1024)


# --- authorization before bytes ---------------------------------------------------------

BOUNDARY = "nexusboundary42"
CHUNK = 1024 * 1024
CHUNKS = 16


class CountingBody:
    """A well-formed multipart upload (name, kernel, 16 MiB rootfs) that counts the bytes
    the server pulled from it."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="kernel"; '
            f'filename="vmlinuz"\r\n\r\n{KERNEL.decode("latin-1")}\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="rootfs"; '
            'filename="rootfs.ext4"\r\n\r\n'
        ).encode("latin-1")
        self.sent += len(head)
        yield head
        for _ in range(CHUNKS):
            self.sent += CHUNK
            yield b"\xab" * CHUNK
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.sent += len(tail)
        yield tail


def multipart_headers(headers: dict[str, str], length: int | None = None) -> dict[str, str]:
    h = headers | {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if length is not None:
        h["Content-Length"] = str(length)
    return h


async def test_viewer_upload_is_refused_before_any_byte_is_read(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    _, viewer = await make_user("vera", "viewer")
    body = CountingBody()
    r = await client.post(
        "/v1/images/upload", content=body.__aiter__(), headers=multipart_headers(viewer)
    )
    assert r.status_code == 403, r.text
    assert body.sent < CHUNK, body.sent  # it used to be the whole 16 MiB
    assert leftovers(client) == []


async def test_read_scoped_token_upload_is_refused_before_any_byte_is_read(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    r = await client.post("/v1/auth/tokens", json={"name": "ro", "scopes": ["read"]}, headers=admin)
    assert r.status_code == 201, r.text
    ro = {"Authorization": f"Bearer {r.json()['token']}"}
    body = CountingBody()
    r = await client.post(
        "/v1/images/upload", content=body.__aiter__(), headers=multipart_headers(ro)
    )
    assert r.status_code == 403, r.text
    assert body.sent < CHUNK, body.sent
    assert leftovers(client) == []


async def test_denied_upload_is_audited(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    _, viewer = await make_user("vic", "viewer")
    body = CountingBody()
    r = await client.post(
        "/v1/images/upload", content=body.__aiter__(), headers=multipart_headers(viewer)
    )
    assert r.status_code == 403
    r = await client.get("/v1/audit", params={"action": "image.upload"}, headers=admin)
    assert r.status_code == 200, r.text
    rows = r.json() if isinstance(r.json(), list) else r.json().get("items", [])
    assert any(row.get("outcome") == "denied" for row in rows), rows


async def test_upload_over_the_free_space_is_507_before_reading(
    app_factory: Callable[..., Awaitable[httpx.AsyncClient]],
) -> None:
    client = await app_factory(max_upload_bytes=2**60)
    r = await client.post("/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
    body = CountingBody()
    # a (lying) Content-Length far beyond any disk: refused from statvfs alone
    r = await client.post(
        "/v1/images/upload",
        content=body.__aiter__(),
        headers=multipart_headers(admin, length=2**59),
    )
    assert r.status_code == 507, r.text
    assert "free" in r.json()["detail"]
    assert body.sent < CHUNK


async def test_upload_content_length_over_the_limit_is_413_before_reading(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    limit = client.app.state.nexus.settings.max_upload_bytes  # type: ignore[attr-defined]
    body = CountingBody()
    r = await client.post(
        "/v1/images/upload",
        content=body.__aiter__(),
        headers=multipart_headers(admin, length=limit + 1),
    )
    assert r.status_code == 413, r.text
    assert body.sent < CHUNK


async def test_concurrent_upload_limit_is_503_with_retry_after(
    app_factory: Callable[..., Awaitable[httpx.AsyncClient]], tmp_path: Path
) -> None:
    client = await app_factory(max_concurrent_uploads=1)
    r = await client.post("/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
    state: Any = client.app.state.nexus  # type: ignore[attr-defined]
    # one upload in progress (its slot held, as the streaming upload holds it)
    async with upload_mod.upload_slot(state):
        body = CountingBody()
        r = await client.post(
            "/v1/images/upload", content=body.__aiter__(), headers=multipart_headers(admin)
        )
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert "concurrent" in r.json()["detail"]
        assert body.sent < CHUNK
    rootfs = tmp_path / "ok.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(rootfs), "8M"], check=True)
    assert (await upload(client, admin, rootfs)).status_code == 201  # the slot is free again


# --- 413 for an oversized chunked body ----------------------------------------------------


async def test_oversized_chunked_body_is_413_problem(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    limit = client.app.state.nexus.settings.max_body_bytes  # type: ignore[attr-defined]

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "x", "description": "'
        for _ in range(limit // 4096 + 2):
            yield b"a" * 4096
        yield b'"}'

    r = await client.post(
        "/v1/networks",
        content=chunks(),
        headers=admin | {"Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert str(limit) in r.json()["detail"]
