"""JWT key ring: key file mode, kid required, rotation window, minimum key length."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import jwt
import pytest

from nexus.core import signing
from nexus.core.signing import KeyRing, SigningKeyError

GRACE = timedelta(seconds=900)


def test_key_file_is_created_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a lax umask: the file is private anyway
    try:
        ring = KeyRing.from_file(tmp_path / "state" / "jwt-keys.json", grace=GRACE)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "jwt-keys.json").st_mode) == 0o600
    token = ring.encode({"sub": "usr_1", "typ": "access"}, 60)
    assert jwt.get_unverified_header(token)["kid"] == ring.current.kid
    assert ring.decode(token)["sub"] == "usr_1"  # type: ignore[index]


def test_open_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwt-keys.json"
    KeyRing.from_file(path, grace=GRACE)
    os.chmod(path, 0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        KeyRing.from_file(path, grace=GRACE)


def test_short_secret_is_refused() -> None:
    with pytest.raises(SigningKeyError, match="at least 32"):
        KeyRing.from_secret("x" * 31, grace=GRACE)
    assert KeyRing.from_secret("x" * 32, grace=GRACE).current.kid.startswith("s")


def test_unknown_kid_and_missing_claims_are_refused() -> None:
    ring = KeyRing.from_secret("y" * 40, grace=GRACE)
    kid = ring.current.kid
    assert (
        ring.decode(jwt.encode({"sub": "a", "typ": "access"}, "y" * 40, headers={"kid": kid}))
        is None
    )
    other = jwt.encode(
        {"sub": "a", "typ": "access", "exp": 2**40, "iat": 1}, "y" * 40, headers={"kid": "nope"}
    )
    assert ring.decode(other) is None
    ok = jwt.encode(
        {"sub": "a", "typ": "access", "exp": 2**40, "iat": 1}, "y" * 40, headers={"kid": kid}
    )
    assert ring.decode(ok) is not None


def test_rotation_keeps_the_old_key_for_the_grace_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing, "RELOAD_CHECK_S", 0.0)
    path = tmp_path / "jwt-keys.json"
    ring = KeyRing.from_file(path, grace=GRACE)
    old = ring.encode({"sub": "a", "typ": "access"}, 60)
    new_key = signing.rotate_key_file(path, GRACE)
    assert ring.current.kid == new_key.kid  # the running ring picked the rotation up
    assert ring.decode(old) is not None
    now = signing.utcnow()
    monkeypatch.setattr(signing, "utcnow", lambda: now + GRACE + timedelta(seconds=1))
    assert ring.decode(old) is None
    assert ring.kids == [new_key.kid]
