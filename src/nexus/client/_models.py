"""The models everything else in the SDK builds on: :class:`Resource`, the base of every API
model, and :class:`Operation`, which the collection bases and errors speak of. Imports no
other module of the SDK, so nothing here can be part of an import circle."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

OperationStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class Resource(BaseModel):
    """Base of every API model: field names are the API's; unknown fields are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict, with the API's field names (used by ``nexus -o json``)."""
        return self.model_dump(mode="json")


class Operation(Resource):
    """A long-running task and how far it got.

    ``status`` goes pending -> running -> succeeded | failed | cancelled; ``resource_id``
    names what it acts on; ``error`` says why it failed.
    """

    id: str
    kind: str
    status: OperationStatus
    progress: int = 0
    message: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        """True once the operation is terminal."""
        return self.status in TERMINAL
