"""JWT signing keys: a key file outside the database, key ids (``kid``) and rotation.

The key that signs access tokens must not sit in the database: anyone who can read the
database could otherwise forge an admin token. It lives in ``<state_dir>/jwt-keys.json``
(0600, written atomically) or comes from the ``secret_key`` setting (environment or config
file, at least :data:`MIN_KEY_LENGTH` characters).

Every token carries the id of the key that signed it in its header (``kid``). Rotation
(``nexus-manager rotate-key``) adds a new current key and retires the old one: a retired key
still verifies tokens for one access-token lifetime (so no session is cut short), then it
is dropped from the file. A running manager notices a rotation by the file's mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from nexus.core.files import is_private, write_private
from nexus.core.timeutil import as_utc, utcnow

JWT_ALGORITHM = "HS256"
KEY_FILE_NAME = "jwt-keys.json"
MIN_KEY_LENGTH = 32  # characters; a generated key is 64 URL-safe characters (384 bits)
REQUIRED_CLAIMS = ("exp", "iat", "sub", "typ")
# How often a verifier looks at the key file's mtime to pick up a rotation.
RELOAD_CHECK_S = 1.0


class SigningKeyError(Exception):
    """A signing-key problem that must stop start-up (short key, unreadable key file)."""


@dataclass(frozen=True)
class SigningKey:
    """One HMAC key and its id; ``retired_at`` is set once a newer key took over."""

    kid: str
    secret: str
    created_at: datetime
    retired_at: datetime | None = None

    def usable(self, now: datetime, grace: timedelta) -> bool:
        """True while the key may still verify tokens (current, or retired < ``grace`` ago)."""
        return self.retired_at is None or now < self.retired_at + grace


def check_key_length(secret: str, source: str) -> None:
    """Refuse a key shorter than :data:`MIN_KEY_LENGTH` (a short HMAC key can be guessed)."""
    if len(secret) < MIN_KEY_LENGTH:
        raise SigningKeyError(
            f"{source} is {len(secret)} characters; it must be at least {MIN_KEY_LENGTH} "
            "(generate one: python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )


def _new_key(now: datetime) -> SigningKey:
    return SigningKey(
        kid=f"k{secrets.token_hex(6)}", secret=secrets.token_urlsafe(48), created_at=now
    )


def _dump(keys: list[SigningKey]) -> str:
    return json.dumps(
        {
            "keys": [
                {
                    "kid": k.kid,
                    "secret": k.secret,
                    "created_at": k.created_at.isoformat(),
                    "retired_at": k.retired_at.isoformat() if k.retired_at else None,
                }
                for k in keys
            ]
        },
        indent=2,
    )


def _load(path: Path) -> list[SigningKey]:
    if not is_private(path):
        raise SigningKeyError(
            f"key file {path} is readable by group or others: run chmod 600 {path}"
        )
    try:
        raw = json.loads(path.read_text())
        keys = [
            SigningKey(
                kid=str(k["kid"]),
                secret=str(k["secret"]),
                created_at=as_utc(datetime.fromisoformat(k["created_at"])),
                retired_at=as_utc(datetime.fromisoformat(k["retired_at"]))
                if k.get("retired_at")
                else None,
            )
            for k in raw["keys"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SigningKeyError(f"key file {path} is unreadable or damaged: {exc}") from exc
    if not keys or sum(1 for k in keys if k.retired_at is None) != 1:
        raise SigningKeyError(f"key file {path} must hold exactly one current key")
    for k in keys:
        check_key_length(k.secret, f"key {k.kid} in {path}")
    return keys


def key_file(state_dir: Path) -> Path:
    """Where the signing keys of a manager with this ``state_dir`` live."""
    return Path(state_dir) / KEY_FILE_NAME


def ensure_key_file(path: Path) -> None:
    """Create the key file with one fresh key unless it exists (0600 from the start)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd_path = path.with_name(f".{path.name}.lock")
    # O_EXCL on a lock name: two processes starting at once do not both write a key
    try:
        fd = os.open(fd_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            if path.exists():
                return
            time.sleep(0.1)
        raise SigningKeyError(f"stale lock {fd_path}: remove it and start again") from None
    try:
        if not path.exists():
            write_private(path, _dump([_new_key(utcnow())]))
    finally:
        os.close(fd)
        fd_path.unlink(missing_ok=True)


def rotate_key_file(path: Path, grace: timedelta) -> SigningKey:
    """Add a new current key, retire the old one, drop keys retired more than ``grace`` ago."""
    ensure_key_file(path)
    now = utcnow()
    kept = [
        SigningKey(k.kid, k.secret, k.created_at, k.retired_at or now)
        for k in _load(path)
        if k.usable(now, grace)
    ]
    new = _new_key(now)
    write_private(path, _dump([*kept, new]))
    return new


class KeyRing:
    """The keys a manager signs and verifies with.

    ``from_secret``: one fixed key (the ``secret_key`` setting). ``from_file``: the key file,
    re-read when it changes on disk (a rotation by ``nexus-manager rotate-key``).
    """

    def __init__(
        self, keys: list[SigningKey], *, grace: timedelta, path: Path | None = None
    ) -> None:
        self._keys = keys
        self._grace = grace
        self._path = path
        self._mtime = path.stat().st_mtime_ns if path else 0
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def from_secret(cls, secret: str, *, grace: timedelta) -> KeyRing:
        """A ring of the one configured key; its id is derived from the key (stable)."""
        check_key_length(secret, "setting 'secret_key'")
        kid = "s" + hashlib.sha256(secret.encode()).hexdigest()[:12]
        return cls([SigningKey(kid, secret, utcnow())], grace=grace)

    @classmethod
    def from_file(cls, path: Path, *, grace: timedelta) -> KeyRing:
        """The ring of the key file at ``path`` (created with one key if missing)."""
        ensure_key_file(path)
        return cls(_load(path), grace=grace, path=path)

    @property
    def current(self) -> SigningKey:
        """The key new tokens are signed with."""
        self._maybe_reload()
        return next(k for k in self._keys if k.retired_at is None)

    @property
    def kids(self) -> list[str]:
        """Ids of every key that still verifies."""
        self._maybe_reload()
        now = utcnow()
        return [k.kid for k in self._keys if k.usable(now, self._grace)]

    def _maybe_reload(self) -> None:
        if self._path is None or time.monotonic() - self._checked < RELOAD_CHECK_S:
            return
        with self._lock:
            self._checked = time.monotonic()
            try:
                mtime = self._path.stat().st_mtime_ns
            except OSError:
                return  # keep the keys we have; start-up reports a missing file
            if mtime != self._mtime:
                self._keys, self._mtime = _load(self._path), mtime

    def encode(self, claims: dict[str, Any], ttl_s: int) -> str:
        """Sign ``claims`` with the current key; adds ``iat``, ``exp`` and the ``kid`` header."""
        key = self.current
        now = utcnow()
        payload = {**claims, "iat": now, "exp": now + timedelta(seconds=ttl_s)}
        return jwt.encode(payload, key.secret, algorithm=JWT_ALGORITHM, headers={"kid": key.kid})

    def decode(self, token: str) -> dict[str, Any] | None:
        """The verified claims, or None: bad signature, expired, no ``exp``/``iat``, unknown or
        dropped ``kid``."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return None
        self._maybe_reload()
        now = utcnow()
        key = next((k for k in self._keys if k.kid == kid and k.usable(now, self._grace)), None)
        if key is None:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.secret,
                algorithms=[JWT_ALGORITHM],
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError:
            return None
        return claims
