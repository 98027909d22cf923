"""API test fixtures: a fresh database per test (SQLite file copy, or PostgreSQL truncate),
the real app with its lifespan, and helpers to log in as users of each role.

Set NEXUS_TEST_DATABASE_URL to a PostgreSQL URL to run the same tests on PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from nexus.core.ids import new_id
from nexus.core.settings import Settings
from nexus.manager import migrate
from nexus.manager.app import create_app
from nexus.manager.features.images.models import Image
from nexus.manager.features.vms.models import Vm
from nexus.manager.models import metadata
from tests.support.hosts import HOST_FACTS

ADMIN_PASSWORD = "admin-pass-123"
PG_URL = os.environ.get("NEXUS_TEST_DATABASE_URL", "")


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database to start each test from."""
    if PG_URL:
        migrate.upgrade_sync(PG_URL)
        return PG_URL
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    migrate.upgrade_sync(f"sqlite+aiosqlite:///{path}")
    return str(path)


async def _truncate_pg(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@pytest.fixture
async def database_url(template_db: str, tmp_path: Path) -> str:
    """A fresh, migrated, empty database for one test."""
    if PG_URL:
        await _truncate_pg(PG_URL)
        return PG_URL
    dst = tmp_path / "nexus.db"
    shutil.copy(template_db, dst)
    dst.chmod(0o600)  # the manager refuses a database others can read
    return f"sqlite+aiosqlite:///{dst}"


@pytest.fixture
def settings_factory(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Build test settings, with overrides."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "state_dir": tmp_path / "state",
            "cache_dir": tmp_path / "cache",
            "embedded_agent": False,
            "bootstrap_admin_password": ADMIN_PASSWORD,
            "log_level": "warning",
            "rate_limit_auth": "1000/minute",
            "rate_limit_create": "1000/minute",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def app_factory(
    settings_factory: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """Start apps (lifespan included) and give an httpx client for each."""
    stack: list[Any] = []

    async def make(**overrides: Any) -> httpx.AsyncClient:
        app = create_app(settings_factory(**overrides))
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("10.9.8.7", 5000)),
            base_url="http://nexus.test",
        )
        client.app = app  # type: ignore[attr-defined]
        stack.append((ctx, client))
        return client

    yield make
    for ctx, client in reversed(stack):
        await client.aclose()
        await ctx.__aexit__(None, None, None)


@pytest.fixture
async def client(app_factory: Callable[..., Awaitable[httpx.AsyncClient]]) -> httpx.AsyncClient:
    """A client of a default test app."""
    return await app_factory()


async def login(client: httpx.AsyncClient, username: str, password: str) -> dict[str, str]:
    """Log in and return the Authorization header."""
    r = await client.post("/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
async def admin(client: httpx.AsyncClient) -> dict[str, str]:
    """Headers of the bootstrap admin."""
    return await login(client, "admin", ADMIN_PASSWORD)


UserMaker = Callable[[str, str], Awaitable[tuple[str, dict[str, str]]]]


@pytest.fixture
async def make_user(client: httpx.AsyncClient, admin: dict[str, str]) -> UserMaker:
    """Create a user with a role; returns (user_id, auth headers)."""

    async def make(username: str, role: str) -> tuple[str, dict[str, str]]:
        pw = f"{username}-password"
        r = await client.post(
            "/v1/users", json={"username": username, "password": pw, "role": role}, headers=admin
        )
        assert r.status_code == 201, r.text
        return r.json()["id"], await login(client, username, pw)

    return make


async def import_image(client: httpx.AsyncClient, admin: dict[str, str], tmp: Path) -> Any:
    """A tiny imported image (ELF 'kernel' + 8 MiB ext4); returns the image JSON."""
    kernel = tmp / "vmlinuz"
    kernel.write_bytes(b"\x7fELF" + bytes(range(256)) * 8)
    rootfs = tmp / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(rootfs), "8M"], check=True)
    r = await client.post(
        "/v1/images",
        json={"name": "tiny", "kernel_path": str(kernel), "rootfs_path": str(rootfs)},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    return r.json()


async def register_host(client: httpx.AsyncClient, admin: dict[str, str], name: str) -> Any:
    """A registered host: {host_id, host_token, agent_token}."""
    r = await client.post("/v1/hosts/join-tokens", headers=admin)
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/hosts/register",
        json={
            "join_token": r.json()["token"],
            "name": name,
            "agent_url": f"http://{name}:8081",
            "facts": HOST_FACTS,
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


def bearer(host: Any) -> dict[str, str]:
    """The Authorization header of a registered host (its host token)."""
    return {"Authorization": f"Bearer {host['host_token']}"}


async def seed_vms(
    state: Any,
    owner_id: str,
    states: list[str],
    *,
    host_id: str | None = None,
    vcpus: int = 1,
    labels: dict[str, str] | None = None,
) -> list[str]:
    """VM rows straight in the database (one per entry of ``states``), on a placeholder
    image; returns their ids."""
    ids: list[str] = []
    async with state.db.session() as s:
        if await s.get(Image, "img_test") is None:
            s.add(
                Image(
                    id="img_test",
                    name="t",
                    source="test",
                    public=True,
                    kernel_sha256="k",
                    rootfs_sha256="r",
                    path="/nonexistent",
                    created_by_user_id=owner_id,
                )
            )
            await s.flush()
        for vm_state in states:
            vm_id = new_id("vm")
            ids.append(vm_id)
            s.add(
                Vm(
                    id=vm_id,
                    name=f"v{len(ids)}-{vm_id[-6:]}",
                    vcpus=vcpus,
                    memory_mib=256,
                    image_id="img_test",
                    host_id=host_id,
                    state=vm_state,
                    desired_state="stopped",
                    labels=labels or {},
                    created_by_user_id=owner_id,
                )
            )
    return ids
