"""Security primitives: password hashing (argon2id), JWTs, opaque secrets and their hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from nexus.core.timeutil import utcnow

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
JWT_ALGORITHM = "HS256"
API_TOKEN_PREFIX = "nxs_"


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; never raises for a mismatch."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# A fixed hash to verify against when a user does not exist, so timing does not leak names.
DUMMY_HASH = hash_password("nexus-dummy-password")


def new_secret(nbytes: int = 32) -> str:
    """A URL-safe random secret."""
    return secrets.token_urlsafe(nbytes)


def new_api_token() -> str:
    """A new API token secret, ``nxs_`` + 43 URL-safe characters."""
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 of a high-entropy secret (tokens); not for passwords."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secrets_equal(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(a.encode(), b.encode())


def encode_jwt(claims: dict[str, Any], key: str, ttl_s: int) -> str:
    """Sign ``claims`` with an expiry ``ttl_s`` seconds from now."""
    now = utcnow()
    payload = {**claims, "iat": now, "exp": now + timedelta(seconds=ttl_s)}
    return jwt.encode(payload, key, algorithm=JWT_ALGORITHM)


def decode_jwt(token: str, key: str) -> dict[str, Any] | None:
    """The verified claims of ``token``, or None when it is invalid or expired."""
    try:
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[JWT_ALGORITHM])
    except jwt.PyJWTError:
        return None
    return claims
