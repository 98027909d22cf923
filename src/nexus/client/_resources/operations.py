"""Operations: long-running tasks (``/v1/operations``)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

from nexus.client._base import AsyncCollection, AsyncPager, Resource, SyncCollection, SyncPager
from nexus.client._errors import OperationTimeout

OperationStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
# Longest single server-side wait per request; the client loops until its own deadline.
MAX_SERVER_WAIT_S = 30.0


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


def _wait_step(deadline: float | None) -> float:
    if deadline is None:
        return MAX_SERVER_WAIT_S
    return max(0.1, min(MAX_SERVER_WAIT_S, deadline - time.monotonic()))


class Operations(SyncCollection[Operation]):
    """``client.operations``: list, get, wait for and cancel operations.

    Example:
        >>> op = client.operations.wait("op_01...", timeout=120)
        >>> op.status
        'succeeded'
    """

    path = "/v1/operations"
    model = Operation

    def _model(self, data: Any) -> Operation:
        return Operation.model_validate(data)

    def list(  # type: ignore[override]
        self,
        *,
        status: OperationStatus | None = None,
        resource_id: str | None = None,
        limit: int | None = None,
        page_size: int | None = None,
    ) -> SyncPager[Operation]:
        """Operations you may see, newest first (optionally by status or resource)."""
        return super().list(
            limit=limit, page_size=page_size, status=status, resource_id=resource_id
        )

    def wait(self, id: str, timeout: float | None = None) -> Operation:
        """Block until the operation is terminal and return it (any terminal status).

        Uses the server's long poll (``?wait=true``). Raises
        :class:`~nexus.client.OperationTimeout` after ``timeout`` seconds (None: no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _wait_step(deadline)
            resp = self._http.request(
                "GET",
                self._item_path(id),
                params={"wait": True, "timeout": round(step, 1)},
                timeout=step + 15,
            )
            op = self._model(resp.json())
            if op.done:
                return op
            if deadline is not None and time.monotonic() >= deadline:
                raise OperationTimeout(op, timeout or 0)

    def cancel(self, id: str) -> Operation:
        """Ask a pending or running operation to stop; returns its new state."""
        return self._model(self._http.request("POST", f"{self._item_path(id)}/cancel").json())


class AsyncOperations(AsyncCollection[Operation]):
    """``AsyncClient.operations`` (see :class:`Operations`)."""

    path = "/v1/operations"
    model = Operation

    def _model(self, data: Any) -> Operation:
        return Operation.model_validate(data)

    def list(  # type: ignore[override]
        self,
        *,
        status: OperationStatus | None = None,
        resource_id: str | None = None,
        limit: int | None = None,
        page_size: int | None = None,
    ) -> AsyncPager[Operation]:
        """Operations you may see, newest first."""
        return super().list(
            limit=limit, page_size=page_size, status=status, resource_id=resource_id
        )

    async def wait(self, id: str, timeout: float | None = None) -> Operation:
        """Wait until the operation is terminal and return it (see :meth:`Operations.wait`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _wait_step(deadline)
            resp = await self._http.request(
                "GET",
                self._item_path(id),
                params={"wait": True, "timeout": round(step, 1)},
                timeout=step + 15,
            )
            op = self._model(resp.json())
            if op.done:
                return op
            if deadline is not None and time.monotonic() >= deadline:
                raise OperationTimeout(op, timeout or 0)

    async def cancel(self, id: str) -> Operation:
        """Ask a pending or running operation to stop; returns its new state."""
        resp = await self._http.request("POST", f"{self._item_path(id)}/cancel")
        return self._model(resp.json())
