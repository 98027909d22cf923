"""System API schemas: background loops' leaders."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from nexus.core.paging import Page


class LeaderRead(BaseModel):
    """One background loop's lease."""

    loop: str = Field(description="the loop (lease name), e.g. `reconciler`, `guest-metrics`")
    holder: str = Field(description="the replica id (`rep_...`) holding or last holding it")
    expires_at: datetime = Field(description="the holder renews it every third of its TTL")
    live: bool = Field(
        description="false: the holder stopped renewing; another replica will "
        "take the loop over at its next try"
    )
    this_replica: bool = Field(description="the replica that answered holds this lease")


class LeaderList(Page[LeaderRead]):
    """Every loop's leader, as stored in the database (the same on every replica), by loop
    name; one page holds them all (a loop is one row)."""
