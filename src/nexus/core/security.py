"""Security primitives: password hashing (argon2id), opaque secrets and their hashes.

JWT signing lives in :mod:`nexus.core.signing` (key file, key ids, rotation).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
API_TOKEN_PREFIX = "nxs_"
# argon2 costs tens of milliseconds of CPU and 64 MiB per call: run it in a small pool of
# its own, never on the event loop, so a burst of logins neither stalls every other request
# (health checks, heartbeats) nor grows memory without bound. Extra calls wait their turn.
_pool: ThreadPoolExecutor | None = None
_pool_size = 2


def configure_password_workers(n: int) -> None:
    """Set how many password hashes may run at once (the ``password_hash_workers`` setting)."""
    global _pool, _pool_size
    if n != _pool_size and _pool is not None:
        _pool.shutdown(wait=False)
        _pool = None
    _pool_size = max(1, n)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="argon2")
    return _pool


async def hash_password_async(password: str) -> str:
    """:func:`hash_password` in the bounded hashing pool (for async code)."""
    return await asyncio.get_running_loop().run_in_executor(_executor(), hash_password, password)


async def verify_password_async(password_hash: str, password: str) -> bool:
    """:func:`verify_password` in the bounded hashing pool (for async code)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), verify_password, password_hash, password)


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
