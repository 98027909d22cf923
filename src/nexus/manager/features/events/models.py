"""The events table lives with the outbox (``nexus.manager.platform.outbox``), which writes it
from every transaction; this feature reads and streams it."""

from __future__ import annotations

from nexus.manager.platform.outbox import Event

__all__ = ["Event"]
