"""Backup archives: make one, verify one, restore one.

An archive is one uncompressed tar file ``nexus-backup-<UTC time>.tar`` (mode 0600: it holds
the database and the key files) with:

* ``manifest.json`` — format version, when, the Nexus version, the schema revisions of the
  database, the database kind, and the size and SHA-256 of every other member;
* ``database/nexus.db`` (SQLite, copied with SQLite's online backup API: consistent while
  the manager runs) or ``database/nexus.pgdump`` (PostgreSQL, ``pg_dump --format=custom``:
  one consistent snapshot);
* ``state/jwt-keys.json``, ``state/sealing-keys.json`` — the keys without which the
  database's sessions and sealed host credentials are useless (when they are files);
* ``images/...`` — the image catalogue's files;
* with ``--with-disks``: ``vms/<id>/`` disks and their format records, ``volumes/``,
  ``snapshots/`` (disks of running VMs are copied as they are: crash-consistent at best).

Restore verifies the manifest and every member's size and SHA-256 while unpacking into a
staging directory, refuses a backup whose schema revision this version does not know (a
newer Nexus), and only then swaps the staged files in, moving what they replace into
``<state_dir>/.pre-restore-<time>/``; any failure puts everything back. PostgreSQL is
restored with ``pg_restore --clean --single-transaction`` (all or nothing).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import make_url

from nexus import __version__
from nexus.core.files import ensure_private_dir
from nexus.core.settings import Settings

FORMAT = "nexus-backup"
FORMAT_VERSION = 1
PREFIX = "nexus-backup-"
SUFFIX = ".tar"
KEY_FILES = ("jwt-keys.json", "sealing-keys.json")
DISK_DIRS = ("vms", "volumes", "snapshots")
# per-VM files worth keeping: disks and their records; sockets, pids, logs are not
_VM_SKIP_SUFFIXES = (".sock", ".pid", ".log", ".qmp")
_CHUNK = 1024 * 1024
_CREATED = Path("/")  # marks a directory restore created (undo: remove it)

Progress = Callable[[int, str], None]


class BackupError(Exception):
    """A backup could not be made (the message says why)."""


class RestoreRefused(Exception):
    """The archive is not restorable (corrupt, foreign, newer schema); nothing was changed."""


class RestoreFailed(Exception):
    """Restoring failed part-way; the previous state was put back."""


@dataclass
class BackupResult:
    """What :func:`create_backup` made."""

    path: Path
    size_bytes: int
    sha256: str
    files: int
    database: str
    schema: list[str]
    seconds: float
    pruned: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (operation results, CLI output)."""
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "files": self.files,
            "database": self.database,
            "schema": self.schema,
            "seconds": round(self.seconds, 3),
            "pruned": self.pruned,
        }


# --- helpers --------------------------------------------------------------------------------


def database_kind(url: str) -> str:
    """``sqlite`` or ``postgresql`` (anything else is refused)."""
    backend = make_url(url).get_backend_name()
    if backend in ("sqlite", "postgresql"):
        return backend
    raise BackupError(f"backups support SQLite and PostgreSQL databases, not {backend}")


def sqlite_path(url: str) -> Path:
    """The file of a SQLite URL."""
    db = make_url(url).database
    if not db or db == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up")
    return Path(db)


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as a libpq connection URI (for pg_dump / pg_restore)."""
    u = make_url(url).set(drivername="postgresql")
    return u.render_as_string(hide_password=False)


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).is_file():
            return str(d / name)
    raise BackupError(f"{name} is not installed (Debian: postgresql-client)")


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and name == str(p) and name != "."


class _HashingReader:
    """Wraps a file: hashes what tarfile reads from it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        return data


def _walk(root: Path, base: Path) -> Iterator[tuple[Path, str]]:
    """Regular files under ``root`` as (path, archive name relative to ``base``), sorted."""
    if not root.exists():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.is_symlink() or not p.is_file():
                continue
            yield p, p.relative_to(base).as_posix()


def _pg_revisions(url: str) -> list[str]:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def read() -> list[str]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(text("SELECT version_num FROM alembic_version"))
                ).scalars()
                return sorted(str(r) for r in rows)
        finally:
            await engine.dispose()

    # a thread of its own: the caller may be inside an event loop (tests, the API's worker)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["revisions"] = asyncio.run(read())
        except Exception as exc:
            out["error"] = exc

    worker = threading.Thread(target=run, name="pg-revisions")
    worker.start()
    worker.join()
    if "error" in out:
        raise BackupError(f"cannot read the schema revision: {out['error']}")
    revisions: list[str] = out["revisions"]
    return revisions


def _sqlite_revisions(path: Path) -> list[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sorted(str(r[0]) for r in con.execute("SELECT version_num FROM alembic_version"))
    finally:
        con.close()


# --- backup ---------------------------------------------------------------------------------


def _dump_database(settings: Settings, work: Path) -> tuple[str, Path, list[str]]:
    url = settings.resolved_database_url()
    kind = database_kind(url)
    if kind == "sqlite":
        src = sqlite_path(url)
        if not src.exists():
            raise BackupError(f"database file {src} does not exist")
        dst = work / "nexus.db"
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
        target = sqlite3.connect(dst)
        try:
            source.backup(target, pages=4096)  # online: writers continue between steps
        finally:
            target.close()
            source.close()
        return kind, dst, _sqlite_revisions(dst)
    dst = work / "nexus.pgdump"
    proc = subprocess.run(
        [
            _pg_tool("pg_dump"),
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            f"--file={dst}",
            f"--dbname={libpq_url(url)}",
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise BackupError(f"pg_dump failed: {proc.stderr.strip()[:2000]}")
    return kind, dst, _pg_revisions(url)


def _members(
    settings: Settings, db_file: Path, kind: str, with_disks: bool
) -> list[tuple[Path, str]]:
    state = settings.state_dir
    out: list[tuple[Path, str]] = [(db_file, f"database/{db_file.name}")]
    if settings.secret_key == "" and (state / "jwt-keys.json").is_file():
        out.append((state / "jwt-keys.json", "state/jwt-keys.json"))
    if settings.sealing_key == "" and (state / "sealing-keys.json").is_file():
        out.append((state / "sealing-keys.json", "state/sealing-keys.json"))
    out.extend(_walk(state / "images", state))
    if with_disks:
        for d in DISK_DIRS:
            for p, name in _walk(state / d, state):
                if d == "vms" and (p.name.endswith(_VM_SKIP_SUFFIXES) or p.name.startswith(".")):
                    continue
                out.append((p, name))
    return out


def prune(directory: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` archives in ``directory``; returns their names."""
    archives = sorted(p for p in directory.glob(f"{PREFIX}*{SUFFIX}") if p.is_file())
    gone = archives[: max(0, len(archives) - keep)]
    for p in gone:
        p.unlink(missing_ok=True)
    return [p.name for p in gone]


def create_backup(
    settings: Settings,
    to: Path,
    *,
    keep: int | None = None,
    with_disks: bool = False,
    progress: Progress | None = None,
) -> BackupResult:
    """Write one archive into ``to`` (created 0700); keep the newest ``keep`` archives."""
    began = time.perf_counter()
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    final = to / f"{PREFIX}{stamp}{SUFFIX}"
    partial = to / f".{final.name}.partial"
    work = to / f".{final.name}.work"
    work.mkdir(mode=0o700)
    try:
        if progress:
            progress(10, "copying the database")
        kind, db_file, revisions = _dump_database(settings, work)
        members = _members(settings, db_file, kind, with_disks)
        total = sum(p.stat().st_size for p, _ in members) or 1
        done = 0
        files: list[dict[str, Any]] = []
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for path, name in members:
                with path.open("rb") as fh:
                    st = os.fstat(fh.fileno())
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o600
                    reader = _HashingReader(fh)
                    tar.addfile(info, reader)
                files.append({"path": name, "size": st.st_size, "sha256": reader.sha.hexdigest()})
                done += st.st_size
                if progress:
                    progress(20 + int(70 * done / total), f"archived {name}")
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "created_at": datetime.now(UTC).isoformat(),
                "nexus_version": __version__,
                "database": kind,
                "schema": revisions,
                "with_disks": with_disks,
                "files": files,
            }
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, final)
        sha = hashlib.sha256()
        with final.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                sha.update(chunk)
        pruned = prune(to, keep) if keep else []
        return BackupResult(
            path=final,
            size_bytes=final.stat().st_size,
            sha256=sha.hexdigest(),
            files=len(files),
            database=kind,
            schema=revisions,
            seconds=time.perf_counter() - began,
            pruned=pruned,
        )
    except OSError as exc:
        raise BackupError(f"cannot write the backup in {to}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


# --- verify and restore -------------------------------------------------------------------


def read_manifest(archive: Path) -> dict[str, Any]:
    """The archive's manifest (:class:`RestoreRefused` when it is missing or not ours)."""
    try:
        with tarfile.open(archive, mode="r:") as tar:
            fh = tar.extractfile("manifest.json")
            if fh is None:
                raise RestoreRefused(f"{archive}: manifest.json is not a file")
            manifest: dict[str, Any] = json.loads(fh.read())
    except KeyError as exc:
        raise RestoreRefused(f"{archive}: no manifest.json: not a Nexus backup") from exc
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise RestoreRefused(f"{archive}: unreadable archive or manifest ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise RestoreRefused(f"{archive}: not a Nexus backup (format {manifest.get('format')!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise RestoreRefused(
            f"{archive}: backup format version {manifest.get('version')} is not {FORMAT_VERSION}"
        )
    return manifest


def check_schema(manifest: dict[str, Any], known: Callable[[str], bool]) -> None:
    """Refuse a backup whose schema revision this version of Nexus does not know."""
    revisions = manifest.get("schema") or []
    if not revisions:
        raise RestoreRefused("the backup does not say which schema revision its database has")
    unknown = [r for r in revisions if not known(str(r))]
    if unknown:
        raise RestoreRefused(
            f"the backup's database is at schema revision {', '.join(unknown)}, which this "
            f"Nexus ({__version__}) does not know: it comes from a newer version; restore it "
            "with that version or newer"
        )


def verify_into(archive: Path, manifest: dict[str, Any], staging: Path) -> None:
    """Unpack every member into ``staging``, checking names, sizes and SHA-256 sums against
    the manifest (and that nothing is missing or extra). Raises :class:`RestoreRefused`."""
    expected = {f["path"]: f for f in manifest.get("files", [])}
    if not expected or not any(p.startswith("database/") for p in expected):
        raise RestoreRefused("the manifest lists no database")
    seen: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for member in tar:
                if member.name == "manifest.json":
                    continue
                if not member.isfile() or not _safe_name(member.name):
                    raise RestoreRefused(f"unexpected archive member {member.name!r}")
                want = expected.get(member.name)
                if want is None:
                    raise RestoreRefused(f"{member.name} is not in the manifest")
                if member.name in seen:
                    raise RestoreRefused(f"{member.name} appears twice")
                seen.add(member.name)
                src = tar.extractfile(member)
                if src is None:
                    raise RestoreRefused(f"{member.name} cannot be read")
                dest = staging / member.name
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                sha, size = hashlib.sha256(), 0
                with dest.open("wb") as out:
                    for chunk in iter(lambda s=src: s.read(_CHUNK), b""):  # type: ignore[misc]
                        sha.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                if size != want["size"] or sha.hexdigest() != want["sha256"]:
                    raise RestoreRefused(
                        f"{member.name}: checksum mismatch (archive damaged or altered); "
                        "nothing was changed"
                    )
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RestoreRefused(f"{archive}: damaged archive ({exc}); nothing was changed") from exc
    missing = sorted(set(expected) - seen)
    if missing:
        raise RestoreRefused(f"the archive lacks {', '.join(missing[:5])}; nothing was changed")


@dataclass
class RestoreResult:
    """What :func:`restore_backup` did."""

    archive: Path
    database: str
    schema: list[str]
    files: int
    previous: Path | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "archive": str(self.archive),
            "database": self.database,
            "schema": self.schema,
            "files": self.files,
            "previous_state": str(self.previous) if self.previous else None,
            "seconds": round(self.seconds, 3),
        }


def _pg_restore(url: str, dump: Path) -> None:
    proc = subprocess.run(
        [
            _pg_tool("pg_restore"),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={libpq_url(url)}",
            str(dump),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise RestoreFailed(
            f"pg_restore failed (the database is unchanged): {proc.stderr.strip()[:2000]}"
        )


def _check_sqlite(path: Path, manifest: dict[str, Any]) -> None:
    """The staged database opens, passes ``PRAGMA integrity_check`` and is at the schema the
    manifest names (a damaged file with a matching checksum was damaged before the backup)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check = con.execute("PRAGMA integrity_check").fetchone()
            revisions = sorted(
                str(r[0]) for r in con.execute("SELECT version_num FROM alembic_version")
            )
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise RestoreRefused(f"the archive's database does not open: {exc}") from exc
    if not check or check[0] != "ok":
        raise RestoreRefused(f"the archive's database fails its integrity check: {check}")
    if revisions != sorted(manifest.get("schema") or []):
        raise RestoreRefused("the archive's database is not at the schema its manifest names")


def restore_backup(
    settings: Settings,
    archive: Path,
    *,
    known_revision: Callable[[str], bool],
) -> RestoreResult:
    """Verify ``archive`` completely, then put its database, keys, images (and disks) in
    place of the current ones. :class:`RestoreRefused`: nothing was touched;
    :class:`RestoreFailed`: the previous state was put back."""
    began = time.perf_counter()
    archive = Path(archive)
    manifest = read_manifest(archive)
    check_schema(manifest, known_revision)
    url = settings.resolved_database_url()
    kind = database_kind(url)
    if manifest.get("database") != kind:
        raise RestoreRefused(
            f"the backup holds a {manifest.get('database')} database; this manager uses {kind}"
        )
    state = ensure_private_dir(settings.state_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    staging = state / f".restore-{stamp}"
    staging.mkdir(mode=0o700)
    previous = state / f".pre-restore-{stamp}"
    moved: list[tuple[Path, Path]] = []  # (from, to), in order, to undo

    def move(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(src, dst)
        moved.append((src, dst))

    try:
        verify_into(archive, manifest, staging)
        names = {f["path"] for f in manifest["files"]}
        previous.mkdir(mode=0o700)
        # what the archive replaces: key files, the image catalogue, and (with disks) VMs
        targets: list[str] = [f"state/{k}" for k in KEY_FILES if f"state/{k}" in names]
        targets.append("images")
        if manifest.get("with_disks"):
            targets.extend(DISK_DIRS)
        for t in targets:
            live = state / (t.removeprefix("state/"))
            staged = staging / t
            if live.exists():
                move(live, previous / t)
            if staged.exists():
                move(staged, live)
            elif t in DISK_DIRS or t == "images":
                live.mkdir(mode=0o700)
                moved.append((_CREATED, live))
        if kind == "sqlite":
            db = sqlite_path(url)
            for suffix in ("", "-wal", "-shm", "-journal"):
                old = Path(f"{db}{suffix}")
                if old.exists():
                    move(old, previous / "database" / old.name)
            staged_db = staging / "database" / "nexus.db"
            if not staged_db.exists():
                raise RestoreRefused("the archive's SQLite database is missing")
            _check_sqlite(staged_db, manifest)
            move(staged_db, db)
            os.chmod(db, 0o600)
        else:
            _pg_restore(url, staging / "database" / "nexus.pgdump")
    except BaseException as exc:
        for src, dst in reversed(moved):  # undo, newest first
            with contextlib.suppress(OSError):
                if src == _CREATED:
                    shutil.rmtree(dst, ignore_errors=True)
                else:
                    os.replace(dst, src)
        shutil.rmtree(staging, ignore_errors=True)
        if previous.exists() and not any(p.is_file() for p in previous.rglob("*")):
            shutil.rmtree(previous, ignore_errors=True)
        if isinstance(exc, RestoreRefused | RestoreFailed):
            raise
        if isinstance(exc, Exception):
            raise RestoreFailed(f"restore failed, the previous state was put back: {exc}") from exc
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return RestoreResult(
        archive=archive,
        database=kind,
        schema=list(manifest["schema"]),
        files=len(manifest["files"]),
        previous=previous if any(p.is_file() for p in previous.rglob("*")) else None,
        seconds=time.perf_counter() - began,
    )
