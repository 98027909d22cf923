"""GET /v1/hosts/{host_id}/images/{image_id}/files/{name}: image files for agents, served only
to the host's own credential (host token), with the file's SHA-256 and Range support."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import bearer, import_image, register_host


@pytest.fixture
async def setup(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path
) -> tuple[Any, Any, Any, Path]:
    """(host A, host B, image, image dir on the manager)."""
    a = await register_host(client, admin, "host-a")
    b = await register_host(client, admin, "host-b")
    image = await import_image(client, admin, tmp_path)
    state = client.app.state.nexus  # type: ignore[attr-defined]
    image_dir = state.settings.state_dir / "images" / image["id"]
    assert (image_dir / "rootfs.ext4").is_file()
    return a, b, image, image_dir


def url(host: Any, image_id: str, name: str) -> str:
    return f"/v1/hosts/{host['host_id']}/images/{image_id}/files/{name}"


async def test_host_token_downloads_file_with_sha256(
    client: httpx.AsyncClient, setup: tuple[Any, Any, Any, Path]
) -> None:
    a, _b, image, image_dir = setup
    for name, key in (("rootfs.ext4", "rootfs_sha256"), ("vmlinuz", "kernel_sha256")):
        r = await client.get(url(a, image["id"], name), headers=bearer(a))
        assert r.status_code == 200, r.text
        want = (image_dir / name).read_bytes()
        assert r.content == want
        assert r.headers["x-content-sha256"] == hashlib.sha256(want).hexdigest() == image[key]
        assert r.headers["accept-ranges"] == "bytes"
        assert int(r.headers["content-length"]) == len(want)


async def test_file_without_catalogue_hash_gets_computed_sha256(
    client: httpx.AsyncClient, setup: tuple[Any, Any, Any, Path]
) -> None:
    """vmlinux has no column in the catalogue: its hash is computed (and remembered)."""
    a, _b, image, image_dir = setup
    data = b"\x7fELF" + b"vmlinux" * 1000
    (image_dir / "vmlinux").write_bytes(data)
    for _ in range(2):
        r = await client.get(url(a, image["id"], "vmlinux"), headers=bearer(a))
        assert r.status_code == 200 and r.content == data
        assert r.headers["x-content-sha256"] == hashlib.sha256(data).hexdigest()


async def test_range_request_is_partial(
    client: httpx.AsyncClient, setup: tuple[Any, Any, Any, Path]
) -> None:
    a, _b, image, image_dir = setup
    full = (image_dir / "rootfs.ext4").read_bytes()
    r = await client.get(
        url(a, image["id"], "rootfs.ext4"), headers=bearer(a) | {"Range": "bytes=1024-"}
    )
    assert r.status_code == 206, r.text
    assert r.content == full[1024:]
    assert r.headers["content-range"] == f"bytes 1024-{len(full) - 1}/{len(full)}"
    # the header names the whole file, so a resumed download can still be verified
    assert r.headers["x-content-sha256"] == image["rootfs_sha256"]


async def test_user_tokens_and_no_token_are_401(
    client: httpx.AsyncClient, admin: dict[str, str], setup: tuple[Any, Any, Any, Path]
) -> None:
    a, _b, image, _ = setup
    u = url(a, image["id"], "rootfs.ext4")
    r = await client.get(u, headers=admin)  # even the admin's user token is not a host token
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert (await client.get(u)).status_code == 401
    bad = {"Authorization": "Bearer not-a-host-token"}
    assert (await client.get(u, headers=bad)).status_code == 401
    # the agent token (manager -> agent secret) is not the host token either
    agent_tok = {"Authorization": f"Bearer {a['agent_token']}"}
    assert (await client.get(u, headers=agent_tok)).status_code == 401


async def test_other_hosts_id_is_401(
    client: httpx.AsyncClient, setup: tuple[Any, Any, Any, Path]
) -> None:
    a, b, image, _ = setup
    r = await client.get(url(a, image["id"], "rootfs.ext4"), headers=bearer(b))
    assert r.status_code == 401, r.text
    assert (
        await client.get(url(b, image["id"], "rootfs.ext4"), headers=bearer(b))
    ).status_code == 200
    r = await client.get(url({"host_id": "host_nope"}, image["id"], "vmlinuz"), headers=bearer(a))
    assert r.status_code == 401


@pytest.mark.parametrize(
    "image_id, name",
    [
        ("img_doesnotexist", "rootfs.ext4"),
        (None, "secret.txt"),
        (None, "vmlinux"),  # a known name this image does not have
        (None, "initrd.img"),
        (None, ".."),
        (None, "..%2F..%2Fsecret.txt"),
        (None, "%2E%2E%2F%2E%2E%2Fsecret.txt"),
        (None, "..%5C..%5Csecret.txt"),
        (None, "rootfs.ext4%00"),
        ("..%2F..", "secret.txt"),
        ("%2E%2E", "secret.txt"),
    ],
)
async def test_unknown_image_or_file_is_404(
    client: httpx.AsyncClient,
    setup: tuple[Any, Any, Any, Path],
    image_id: str | None,
    name: str,
) -> None:
    a, _b, image, image_dir = setup
    # a file the traversal attempts aim at: <state_dir>/secret.txt and <state_dir>/images/..
    for d in (image_dir.parent.parent, image_dir.parent):
        (d / "secret.txt").write_text("top-secret")
    r = await client.get(url(a, image_id or image["id"], name), headers=bearer(a))
    assert r.status_code == 404, (r.status_code, r.text[:200])
    assert r.headers["content-type"] == "application/problem+json"
    assert b"top-secret" not in r.content
