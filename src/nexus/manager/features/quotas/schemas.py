"""Quota API schemas."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

QuotaName = Literal[
    "vms",
    "vcpus",
    "memory_mib",
    "disk_mib",
    "volumes",
    "networks",
    "snapshots",
    "images",
    "api_tokens",
]


class QuotaRead(BaseModel):
    """A user's quota: effective ``limits`` (role defaults + ``overrides``; -1 = unlimited)
    and live ``usage`` (``disk_mib``: root disks + volumes)."""

    user_id: str
    username: str
    role: Literal["admin", "operator", "viewer"]
    limits: dict[QuotaName, int]
    overrides: dict[QuotaName, int]
    usage: dict[QuotaName, int]


class QuotaUpdate(BaseModel):
    """``PUT /v1/quotas/{user}``: the user's overrides, replacing any earlier ones. A limit
    left out (or ``null``) follows the role default; ``-1`` is unlimited."""

    model_config = ConfigDict(extra="forbid")
    limits: dict[QuotaName, int | None] = Field(
        default_factory=dict, description="limit -> value (>= 0, or -1 for unlimited)"
    )

    @field_validator("limits")
    @classmethod
    def _at_least_minus_one(cls, v: dict[str, int | None]) -> dict[str, int | None]:
        for name, value in v.items():
            if value is not None and value < -1:
                raise ValueError(f"{name}: must be >= 0, or -1 for unlimited")
        return v
