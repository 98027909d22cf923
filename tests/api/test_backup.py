"""Backup and restore: POST /v1/admin/backup (admin only, an operation), nexus-manager
backup/restore. Backup -> wipe -> restore gives back the same users, VMs, API tokens and
audit rows (SQLite here; PostgreSQL with NEXUS_TEST_DATABASE_URL, as `make test-pg` runs);
a damaged archive, a foreign one and one from a newer schema are refused without changing
anything; a failure part-way puts the previous state back."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from nexus.core.db import Database
from nexus.core.settings import Settings
from nexus.manager import migrate
from nexus.manager.features.backup import archive
from tests.api.conftest import ADMIN_PASSWORD, PG_URL, UserMaker, login, seed_vms
from tests.support.server import free_port

AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]
TABLES = {
    "users": "SELECT id, username, role, password_hash FROM users",
    "vms": "SELECT id, name, state, created_by_user_id FROM vms",
    "api_tokens": "SELECT id, token_hash, scopes FROM api_tokens",
    "audit_events": "SELECT id, action, resource_id, outcome FROM audit_events",
}
BIN = Path(sys.executable).parent


async def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    db = Database(url)
    try:
        async with db.session() as s:
            return {
                name: sorted(tuple(str(v) for v in row) for row in (await s.execute(text(q))).all())
                for name, q in TABLES.items()
            }
    finally:
        await db.dispose()


async def _wipe(settings: Settings) -> None:
    url = settings.resolved_database_url()
    if archive.database_kind(url) == "postgresql":
        db = Database(url)
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await db.dispose()
    else:
        db_file = archive.sqlite_path(url)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_file}{suffix}").unlink(missing_ok=True)
    for name in archive.KEY_FILES:
        (settings.state_dir / name).unlink(missing_ok=True)


async def _populate(client: httpx.AsyncClient, make_user: UserMaker) -> dict[str, str]:
    admin = await login(client, "admin", ADMIN_PASSWORD)
    op_id, op = await make_user("opal", "operator")
    await make_user("vera", "viewer")
    r = await client.post("/v1/auth/tokens", json={"name": "ci", "scopes": ["read"]}, headers=op)
    assert r.status_code == 201, r.text
    await seed_vms(client.app.state.nexus, op_id, ["stopped", "running"])  # type: ignore[attr-defined]
    return admin


def _known(url: str) -> Callable[[str], bool]:
    return lambda rev: migrate.knows_revision(url, rev)


async def test_backup_api_is_admin_only_and_an_operation(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str]
) -> None:
    _, op = await make_user("olga", "operator")
    _, viewer = await make_user("vic", "viewer")
    for headers in (op, viewer):
        r = await client.post("/v1/admin/backup", json={}, headers=headers)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.get("/v1/audit?action=backup.create", headers=admin)
    denied = [e for e in r.json()["items"] if e["outcome"] == "denied"]
    assert len(denied) == 2
    r = await client.post("/v1/admin/backup", json={"keep": 2}, headers=admin)
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "backup.create"
    r = await client.get(f"/v1/operations/{r.json()['id']}?wait=true&timeout=60", headers=admin)
    done = r.json()
    assert done["status"] == "succeeded", done
    path = Path(done["result"]["path"])
    settings: Settings = client.app.state.nexus.settings  # type: ignore[attr-defined]
    assert path.parent == settings.state_dir / "backups"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert done["result"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # --keep: older archives are pruned
    for _ in range(2):
        r = await client.post("/v1/admin/backup?wait=true", json={"keep": 2}, headers=admin)
        assert r.status_code == 200, r.text
    assert len(list(path.parent.glob("nexus-backup-*.tar"))) == 2
    assert r.json()["result"]["pruned"]
    r = await client.post("/v1/admin/backup", json={"keep": 0}, headers=admin)
    assert r.status_code == 422
    r = await client.get("/v1/audit?action=backup.create", headers=admin)
    assert len([e for e in r.json()["items"] if e["outcome"] == "success"]) == 3
    # metrics: the operations by kind and outcome, the newest archive's time
    state = client.app.state.nexus  # type: ignore[attr-defined]
    state.settings = state.settings.model_copy(update={"metrics_scrape_allow": ["10.9.8.0/24"]})
    text_ = (await client.get("/metrics")).text
    ops = [ln for ln in text_.splitlines() if ln.startswith("nexus_operations_total{")]
    done = [ln for ln in ops if 'kind="backup.create"' in ln and 'outcome="succeeded"' in ln]
    assert done and float(done[0].split()[-1]) >= 3  # counters are per process
    assert 'nexus_backups_total{outcome="succeeded"}' in text_
    last = [ln for ln in text_.splitlines() if ln.startswith("nexus_backup_last_success")]
    assert last and float(last[0].split()[1]) > 0


async def test_backup_wipe_restore_gives_the_same_state(
    app_factory: AppFactory,
    make_user: UserMaker,
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    await _populate(client, make_user)
    settings: Settings = client.app.state.nexus.settings  # type: ignore[attr-defined]
    url = settings.resolved_database_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update(
        NEXUS_STATE_DIR=str(settings.state_dir),
        NEXUS_DATABASE_URL=url,
        NEXUS_PORT=str(free_port()),  # no manager answers there
    )
    # the CLI backs up while the app holds the database open
    out = subprocess.run(
        [str(BIN / "nexus-manager"), "backup", "--to", str(tmp_path / "bk")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.split()[1])
    before = await _snapshot(url)
    assert len(before["users"]) == 3 and len(before["vms"]) == 2
    assert len(before["api_tokens"]) == 1 and before["audit_events"]
    await client.app.state.nexus.db.dispose()  # type: ignore[attr-defined]
    await _wipe(settings)
    out = subprocess.run(
        [str(BIN / "nexus-manager"), "restore", "--from", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "restored" in out.stdout
    assert await _snapshot(url) == before
    assert (settings.state_dir / "jwt-keys.json").is_file()
    if archive.database_kind(url) == "sqlite":
        assert oct(archive.sqlite_path(url).stat().st_mode & 0o777) == "0o600"
    # the restored state serves: the operator logs in with the password it had
    again = await app_factory()
    await login(again, "opal", "opal-password")


def _rewrite(src: Path, dst: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """Copy an archive member by member through ``change`` (None drops the member)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            fh = tin.extractfile(m)
            data = change(m.name, fh.read() if fh else b"")
            if data is None:
                continue
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def _fingerprint(settings: Settings) -> dict[str, str]:
    out = {}
    for p in sorted(settings.state_dir.rglob("*")):
        if p.is_file() and "backups" not in p.parts:
            out[str(p.relative_to(settings.state_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


async def test_damaged_foreign_or_newer_archives_change_nothing(
    client: httpx.AsyncClient, make_user: UserMaker, tmp_path: Path
) -> None:
    await _populate(client, make_user)
    state = client.app.state.nexus  # type: ignore[attr-defined]
    settings: Settings = state.settings
    url = settings.resolved_database_url()
    good = archive.create_backup(settings, tmp_path / "bk").path
    before_rows = await _snapshot(url)
    await state.db.dispose()

    def flip(name: str, data: bytes) -> bytes:
        if name.startswith("database/"):
            i = len(data) // 2
            return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        return data

    def newer(name: str, data: bytes) -> bytes:
        if name == "manifest.json":
            m = json.loads(data)
            m["schema"] = ["9901"]
            return json.dumps(m).encode()
        return data

    def foreign(name: str, data: bytes) -> bytes:
        if name == "manifest.json":
            return json.dumps({"format": "something-else", "version": 1}).encode()
        return data

    def missing(name: str, data: bytes) -> bytes | None:
        return None if name.startswith("database/") else data

    def extra(name: str, data: bytes) -> bytes:
        return data

    cases: dict[str, tuple[Callable[[str, bytes], bytes | None], str]] = {
        "flip": (flip, "checksum mismatch"),
        "newer": (newer, "newer version"),
        "foreign": (foreign, "not a Nexus backup"),
        "missing": (missing, "lacks"),
    }
    fp = _fingerprint(settings)
    for name, (change, words) in cases.items():
        bad = tmp_path / f"{name}.tar"
        _rewrite(good, bad, change)
        with pytest.raises(archive.RestoreRefused, match=words):
            archive.restore_backup(settings, bad, known_revision=_known(url))
        assert _fingerprint(settings) == fp, name
    # truncated archive
    trunc = tmp_path / "trunc.tar"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(archive.RestoreRefused):
        archive.restore_backup(settings, trunc, known_revision=_known(url))
    # an extra member not in the manifest
    smuggled = tmp_path / "extra.tar"
    _rewrite(good, smuggled, extra)
    with tarfile.open(smuggled, "a") as t:
        info = tarfile.TarInfo("state/evil.json")
        info.size = 2
        t.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(archive.RestoreRefused, match="not in the manifest"):
        archive.restore_backup(settings, smuggled, known_revision=_known(url))
    assert _fingerprint(settings) == fp
    assert not list(settings.state_dir.glob(".restore-*"))
    assert not list(settings.state_dir.glob(".pre-restore-*"))
    assert await _snapshot(url) == before_rows


@pytest.mark.skipif(
    bool(PG_URL), reason="moves SQLite files; PostgreSQL restores in one transaction"
)
async def test_a_failure_part_way_puts_the_previous_state_back(
    client: httpx.AsyncClient, make_user: UserMaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _populate(client, make_user)
    state = client.app.state.nexus  # type: ignore[attr-defined]
    settings: Settings = state.settings
    url = settings.resolved_database_url()
    bk = archive.create_backup(settings, tmp_path / "bk").path
    await client.post(
        "/v1/users",
        json={"username": "late", "password": "late-password", "role": "viewer"},
        headers=await login(client, "admin", ADMIN_PASSWORD),
    )
    before_rows = await _snapshot(url)
    await state.db.dispose()
    fp = _fingerprint(settings)

    real_chmod = os.chmod

    def broken_chmod(path: Any, mode: int) -> None:
        if str(path).endswith("nexus.db"):  # after the new database was moved in
            raise OSError(28, "No space left on device")
        real_chmod(path, mode)

    monkeypatch.setattr(archive.os, "chmod", broken_chmod)
    with pytest.raises(archive.RestoreFailed, match="put back"):
        archive.restore_backup(settings, bk, known_revision=_known(url))
    monkeypatch.undo()
    assert _fingerprint(settings) == fp
    assert await _snapshot(url) == before_rows  # 'late' is still there
    assert not list(settings.state_dir.glob(".restore-*"))
    assert not list(settings.state_dir.glob(".pre-restore-*"))


async def test_a_database_that_does_not_load_changes_nothing(
    client: httpx.AsyncClient, make_user: UserMaker, tmp_path: Path
) -> None:
    """An archive whose checksums match but whose database is damaged (it was damaged before
    the backup): SQLite refuses it after an integrity check; PostgreSQL's pg_restore fails
    inside its single transaction. Either way the current state stays."""
    await _populate(client, make_user)
    state = client.app.state.nexus  # type: ignore[attr-defined]
    settings: Settings = state.settings
    url = settings.resolved_database_url()
    good = archive.create_backup(settings, tmp_path / "bk").path
    before_rows = await _snapshot(url)
    await state.db.dispose()
    fp = _fingerprint(settings)
    sums: dict[str, str] = {}

    def damage(name: str, data: bytes) -> bytes:
        if name.startswith("database/"):
            i = len(data) // 2
            data = data[:i] + b"\x00\xff" * 4096 + data[i + 8192 :]
            sums[name] = hashlib.sha256(data).hexdigest()
            sums[name + ":size"] = str(len(data))
        return data

    stage = tmp_path / "stage.tar"
    _rewrite(good, stage, damage)

    def fix_manifest(name: str, data: bytes) -> bytes:
        if name == "manifest.json":
            m = json.loads(data)
            for f in m["files"]:
                if f["path"] in sums:
                    f["sha256"], f["size"] = sums[f["path"]], int(sums[f["path"] + ":size"])
            return json.dumps(m).encode()
        return data

    bad = tmp_path / "bad.tar"
    _rewrite(stage, bad, fix_manifest)
    expected = (
        archive.RestoreFailed
        if archive.database_kind(url) == "postgresql"
        else archive.RestoreRefused
    )
    with pytest.raises(expected):
        archive.restore_backup(settings, bad, known_revision=_known(url))
    assert _fingerprint(settings) == fp
    assert await _snapshot(url) == before_rows
    assert not list(settings.state_dir.glob(".pre-restore-*"))


async def test_with_disks_copies_vm_disks_volumes_and_snapshots(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    state = client.app.state.nexus  # type: ignore[attr-defined]
    settings: Settings = state.settings
    url = settings.resolved_database_url()
    vm_dir = settings.state_dir / "vms" / "vm_disk1"
    vm_dir.mkdir(parents=True)
    (vm_dir / "disk.img").write_bytes(b"root disk" * 1000)
    (vm_dir / "disk.img.json").write_text('{"format": "raw"}')
    (vm_dir / "qmp.sock").write_text("not a socket, but named like one")
    (vm_dir / "vmm.pid").write_text("123")
    (settings.state_dir / "volumes").mkdir()
    (settings.state_dir / "volumes" / "vol_1.img").write_bytes(b"volume" * 100)
    (settings.state_dir / "snapshots" / "snap_1").mkdir(parents=True)
    (settings.state_dir / "snapshots" / "snap_1" / "memory").write_bytes(b"mem" * 100)
    plain = archive.create_backup(settings, tmp_path / "bk")
    with tarfile.open(plain.path) as t:
        assert not [n for n in t.getnames() if n.startswith(("vms/", "volumes/", "snapshots/"))]
    full = archive.create_backup(settings, tmp_path / "bk", with_disks=True, keep=1)
    assert full.pruned == [plain.path.name]
    with tarfile.open(full.path) as t:
        names = set(t.getnames())
    assert {
        "vms/vm_disk1/disk.img",
        "vms/vm_disk1/disk.img.json",
        "volumes/vol_1.img",
        "snapshots/snap_1/memory",
    } <= names
    assert "vms/vm_disk1/qmp.sock" not in names and "vms/vm_disk1/vmm.pid" not in names
    # the disks come back, and what stood there is kept aside. A restore runs with the
    # manager stopped (the command refuses otherwise): stop this app's background loops,
    # whose queries would otherwise deadlock with pg_restore's DROP/CREATE on PostgreSQL
    for task in list(state.tasks):
        task.cancel()
    await asyncio.gather(*state.tasks, return_exceptions=True)
    await state.db.dispose()
    (vm_dir / "disk.img").write_bytes(b"changed after the backup")
    (settings.state_dir / "volumes" / "vol_1.img").unlink()
    # in a thread: on PostgreSQL, pg_restore waits for the app's background sessions
    result = await asyncio.to_thread(
        archive.restore_backup, settings, full.path, known_revision=_known(url)
    )
    assert (vm_dir / "disk.img").read_bytes() == b"root disk" * 1000
    assert (settings.state_dir / "volumes" / "vol_1.img").read_bytes() == b"volume" * 100
    assert result.previous is not None
    kept = result.previous / "vms" / "vm_disk1" / "disk.img"
    assert kept.read_bytes() == b"changed after the backup"
