"""Sealing: secrets the manager must be able to read back, stored so that a database reader
cannot use them.

A hash will not do for a secret the manager has to *present* (the agent token it sends to a
host's agent), so such values are encrypted (Fernet: AES-128-CBC + HMAC-SHA256, from
``cryptography``) with a key that never enters the database:

* the ``sealing_key`` setting (``NEXUS_SEALING_KEY``: a Fernet key, 44 URL-safe base64
  characters), or
* ``<state_dir>/sealing-keys.json`` (0600, created on first use): a list of keys, newest
  first.

Sealed values look like ``sealed:v1:<fernet token>``. :class:`SealedString` is a column type
that seals on write and unseals on read, so code (and tests) set and read plain values.

Rotation (``nexus-manager rotate-sealing-key``, or ``python -m nexus.core.sealing rotate
--state-dir DIR``) puts a new key first; older keys still unseal. The manager re-seals every
sealed column with the newest key at start-up, after which ``nexus-manager
rotate-sealing-key --prune`` drops the old keys.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from nexus.core.files import is_private, write_private

PREFIX = "sealed:v1:"
KEY_FILE_NAME = "sealing-keys.json"


class SealingError(Exception):
    """No sealing key, a key file others can read, or a sealed value no known key opens."""


_lock = threading.Lock()
_current: Fernet | None = None
_known: dict[str, Fernet] = {}
"""Every key configured in this process (raw key -> Fernet, newest first): one process may
serve several apps (tests), so a value sealed under an earlier configuration still opens."""


def key_file(state_dir: Path) -> Path:
    """``<state_dir>/sealing-keys.json``."""
    return Path(state_dir) / KEY_FILE_NAME


def _parse_key(key: str, source: str) -> Fernet:
    try:
        return Fernet(key.encode())
    except (ValueError, TypeError) as exc:
        raise SealingError(
            f"{source} is not a Fernet key (32 bytes, URL-safe base64; generate one: "
            "python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key()"
            ".decode())')"
        ) from exc


def read_key_file(path: Path) -> list[str]:
    """The keys of a key file, newest first ([] when the file does not exist)."""
    if not path.exists():
        return []
    if not is_private(path):
        raise SealingError(f"{path} is readable by other accounts; fix: chmod 600 {path}")
    try:
        keys = json.loads(path.read_text())["keys"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SealingError(f"{path}: not a sealing key file ({exc})") from exc
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise SealingError(f"{path}: 'keys' must be a list of strings")
    return keys


def _write_key_file(path: Path, keys: list[str]) -> None:
    write_private(path, json.dumps({"keys": keys}, indent=2) + "\n")


def rotate_key_file(state_dir: Path) -> Path:
    """Put a new key first in ``<state_dir>/sealing-keys.json`` (older keys still unseal)."""
    path = key_file(state_dir)
    _write_key_file(path, [Fernet.generate_key().decode(), *read_key_file(path)])
    return path


def prune_key_file(state_dir: Path) -> int:
    """Keep only the newest key of the key file; returns how many keys were dropped."""
    path = key_file(state_dir)
    keys = read_key_file(path)
    if len(keys) > 1:
        _write_key_file(path, keys[:1])
    return max(len(keys) - 1, 0)


def load_keys(state_dir: Path, env_key: str = "") -> list[str]:
    """The sealing keys, newest first: ``env_key`` (the ``sealing_key`` setting) first when
    set, then the key file's; a key file is created (0600) when there is neither."""
    path = key_file(state_dir)
    keys = read_key_file(path)
    if env_key:
        return [env_key, *[k for k in keys if k != env_key]]
    if not keys:
        keys = [Fernet.generate_key().decode()]
        _write_key_file(path, keys)
    return keys


def configure(keys: list[str]) -> None:
    """Make ``keys[0]`` the sealing key of this process (the others still unseal)."""
    if not keys:
        raise SealingError("no sealing key")
    fernets = {k: _parse_key(k, f"sealing key #{i + 1}") for i, k in enumerate(keys)}
    global _current
    with _lock:
        _current = fernets[keys[0]]
        older = {k: f for k, f in _known.items() if k not in fernets}
        _known.clear()
        _known.update(fernets)
        _known.update(older)
        _opened.clear()


def configure_from(state_dir: Path, env_key: str = "") -> None:
    """:func:`configure` with :func:`load_keys` (manager start-up, migrations)."""
    configure(load_keys(state_dir, env_key))


def is_sealed(value: str) -> bool:
    """True for a value :func:`seal` made."""
    return value.startswith(PREFIX)


def seal(plain: str) -> str:
    """Encrypt ``plain`` with the current key."""
    if _current is None:
        raise SealingError("no sealing key configured (sealing.configure_from at start-up)")
    return PREFIX + _current.encrypt(plain.encode()).decode()


_opened: dict[str, str] = {}
"""Values already unsealed in this process (a key, once known, stays known: the same sealed
value always opens the same way). Reading a thousand hosts' agent tokens every few seconds
would otherwise be a thousand decryptions each time."""
OPENED_MAX = 4096


def unseal(value: str) -> str:
    """Decrypt a sealed value with any known key; raise :class:`SealingError` otherwise."""
    plain = _opened.get(value)
    if plain is not None:
        return plain
    if not is_sealed(value):
        raise SealingError("value is not sealed")
    if not _known:
        raise SealingError("no sealing key configured (sealing.configure_from at start-up)")
    try:
        fernets = MultiFernet(list(_known.values()))
        plain = fernets.decrypt(value[len(PREFIX) :].encode()).decode()
        if len(_opened) >= OPENED_MAX:
            _opened.clear()
        _opened[value] = plain
        return plain
    except InvalidToken as exc:
        raise SealingError(
            "a sealed value opens with none of the sealing keys (key file lost or replaced?)"
        ) from exc


class SealedString(TypeDecorator[str]):
    """A string column whose database value is sealed; Python code sees the plain value.

    A row written before sealing existed (no ``sealed:v1:`` prefix) reads back as is, so
    the migration and :func:`reseal_rows` can seal it; every write seals."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or (isinstance(value, str) and is_sealed(value)):
            return value
        return seal(str(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None or not is_sealed(value):
            return value
        return unseal(value)


def sealed_columns(metadata: Any) -> list[tuple[str, str]]:
    """(table, column) of every :class:`SealedString` column of ``metadata``: what a key
    rotation must re-seal."""
    return [
        (table.name, col.name)
        for table in metadata.sorted_tables
        for col in table.columns
        if isinstance(col.type, SealedString)
    ]


def needs_reseal(stored: str) -> bool:
    """True for a clear value, or one sealed with a key other than the current one."""
    if not is_sealed(stored) or _current is None:
        return True
    try:
        _current.decrypt(stored[len(PREFIX) :].encode())
    except InvalidToken:
        return True
    return False


def reseal_value(stored: str) -> str:
    """The database value ``stored`` sealed with the current key (plain values sealed)."""
    return seal(unseal(stored) if is_sealed(stored) else stored)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nexus.core.sealing",
        description="Manage the manager's sealing keys (<state_dir>/sealing-keys.json).",
    )
    parser.add_argument("command", choices=["rotate", "prune"])
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    os.umask(0o077)
    path = key_file(args.state_dir)
    try:
        keys = read_key_file(path)
    except SealingError as exc:
        print(f"sealing: {exc}", file=sys.stderr)
        return 1
    if args.command == "rotate":
        rotate_key_file(args.state_dir)
        print(f"new sealing key added to {path}; restart the manager to re-seal, then prune")
    else:
        n = prune_key_file(args.state_dir) if keys else 0
        print(f"{n} old sealing key(s) removed from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
