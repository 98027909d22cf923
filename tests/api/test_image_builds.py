"""POST /v1/images/build: an operator's build is private to them, only an admin may make a
build public or force a rebuild, and builds on one cache take a lock (issue 12, point 9)."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.images import build as imagebuild
from tests.api.conftest import ADMIN_PASSWORD, login

CACHE = Path(os.environ.get("NEXUS_TEST_CACHE_DIR", "/var/cache/nexus-test"))
needs_cache = pytest.mark.skipif(
    not list((CACHE / "images").glob("test-*/manifest.json")), reason="no cached test image"
)


async def _user(client: httpx.AsyncClient, admin: dict[str, str], name: str, role: str) -> Any:
    pw = f"{name}-password"
    r = await client.post(
        "/v1/users", json={"username": name, "password": pw, "role": role}, headers=admin
    )
    assert r.status_code == 201, r.text
    return r.json()["id"], await login(client, name, pw)


async def _build(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> Any:
    r = await client.post("/v1/images/build", json={"name": "test", **body}, headers=headers)
    assert r.status_code == 202, r.text
    op = r.json()
    r = await client.get(
        f"/v1/operations/{op['id']}", params={"wait": "true", "timeout": 300}, headers=headers
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    image_id = r.json()["result"]["image_id"]
    r = await client.get(f"/v1/images/{image_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
async def cached(
    app_factory: Callable[..., Awaitable[httpx.AsyncClient]],
) -> tuple[httpx.AsyncClient, dict[str, str]]:
    """An app whose build cache is the shared test cache (a build of ``test`` is a hit)."""
    client = await app_factory(cache_dir=CACHE)
    return client, await login(client, "admin", ADMIN_PASSWORD)


@needs_cache
async def test_operator_build_is_private_to_the_operator(
    cached: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, admin = cached
    olga_id, olga = await _user(client, admin, "olga", "operator")
    _, otto = await _user(client, admin, "otto", "operator")
    img = await _build(client, olga)
    assert img["public"] is False  # it used to be public to every user
    assert img["created_by_user_id"] == olga_id
    assert (await client.get(f"/v1/images/{img['id']}", headers=otto)).status_code == 404
    assert img["id"] not in [
        i["id"] for i in (await client.get("/v1/images", headers=otto)).json()["items"]
    ]


@needs_cache
async def test_admin_build_is_public_by_default(
    cached: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, admin = cached
    assert (await _build(client, admin))["public"] is True


@pytest.mark.parametrize("body", [{"force": True}, {"public": True}])
async def test_operator_may_not_force_or_publish_a_build(
    client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any]
) -> None:
    _, olga = await _user(client, admin, "olga", "operator")
    r = await client.post("/v1/images/build", json={"name": "test", **body}, headers=olga)
    assert r.status_code == 403, r.text
    assert "admin" in r.json()["detail"]
    assert (await client.get("/v1/operations", headers=olga)).json()[
        "items"
    ] == []  # nothing queued
    r = await client.get(
        "/v1/audit", params={"action": "image.build", "outcome": "denied"}, headers=admin
    )
    assert r.status_code == 200 and r.json()["items"], r.text


def test_builds_on_one_cache_wait_for_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A (forced) build does not touch the cache while another build holds its lock."""
    final = tmp_path / "images" / "test-0000000000000000"
    final.mkdir(parents=True)
    (final / "manifest.json").write_text("{}")
    entered = threading.Event()

    def fake_fetch_kernel(cache_dir: Path, progress: Any = None) -> Any:
        entered.set()
        raise imagebuild.ImageBuildError("stop here")

    monkeypatch.setattr(imagebuild, "fetch_kernel", fake_fetch_kernel)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            imagebuild.build_image("test", tmp_path, force=True)
        except imagebuild.ImageBuildError as exc:
            errors.append(exc)

    with imagebuild.build_lock(tmp_path):
        t = threading.Thread(target=run)
        t.start()
        assert not entered.wait(1.0)  # blocked on the lock: nothing of the cache touched
        assert (final / "manifest.json").exists()
        # the lock is a real flock on the file in the cache (other processes see it too)
        fd = os.open(tmp_path / imagebuild.BUILD_LOCK, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    t.join(30)
    assert entered.is_set() and not t.is_alive()
    assert [str(e) for e in errors] == ["stop here"]
