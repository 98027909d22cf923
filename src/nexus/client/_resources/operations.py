"""Operations: long-running tasks (``/v1/operations``)."""

from __future__ import annotations

import time
from typing import Any

from nexus.client._base import AsyncCollection, AsyncPager, SyncCollection, SyncPager
from nexus.client._errors import OperationTimeout
from nexus.client._models import Operation, OperationStatus

__all__ = ["AsyncOperations", "Operation", "OperationStatus", "Operations"]

# Longest single server-side wait per request; the client loops until its own deadline.
MAX_SERVER_WAIT_S = 30.0


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
