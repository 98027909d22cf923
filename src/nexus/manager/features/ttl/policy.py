"""When a VM created with ``ttl_s`` or ``expires_at`` expires (no imports of the VM
service, so the VM service may use it at create)."""

from __future__ import annotations

from datetime import datetime, timedelta

from nexus.core.errors import ValidationFailed
from nexus.core.settings import Settings
from nexus.core.timeutil import as_utc, utcnow


def expiry(
    settings: Settings,
    *,
    ttl_s: int | None = None,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> datetime | None:
    """``expires_at`` from a TTL in seconds or an absolute time (at most one; neither: no
    TTL); 422 for a time in the past or beyond ``max_ttl_s``."""
    now = now or utcnow()
    if ttl_s is not None and expires_at is not None:
        raise ValidationFailed("give ttl_s or expires_at, not both")
    if ttl_s is not None:
        expires_at = now + timedelta(seconds=ttl_s)
    if expires_at is None:
        return None
    expires_at = as_utc(expires_at)
    if expires_at <= now:
        raise ValidationFailed(f"expires_at {expires_at.isoformat()} is in the past")
    longest = now + timedelta(seconds=settings.max_ttl_s)
    if expires_at > longest + timedelta(seconds=1):
        raise ValidationFailed(
            f"a VM may live at most {settings.max_ttl_s} s from now (setting max_ttl_s); "
            f"asked until {expires_at.isoformat()}"
        )
    return expires_at
