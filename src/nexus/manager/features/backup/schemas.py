"""Request bodies of the backup feature."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BackupCreate(BaseModel):
    """What to back up. The archive goes to the ``backup_dir`` setting (default
    ``<state_dir>/backups``); the caller cannot choose another path."""

    model_config = ConfigDict(extra="forbid")

    with_disks: bool = Field(
        default=False,
        description="also copy VM disks, volumes and snapshots (disks of running VMs are "
        "copied as they are: crash-consistent at best)",
    )
    keep: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="keep this many archives in the backup directory, deleting older ones "
        "(default: the backup_keep setting)",
    )
