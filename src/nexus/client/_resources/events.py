"""Events (``/v1/events``): the change log of every resource you may see, paged or live."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from typing import Any

import httpx

from nexus.client._base import AsyncCollection, AsyncPager, Resource, SyncCollection, SyncPager
from nexus.client._errors import error_from_response

__all__ = ["AsyncEvents", "Event", "Events"]


class Event(Resource):
    """One change of one resource; ``id`` only grows (it is the stream's cursor)."""

    id: int
    at: datetime
    type: str
    resource_type: str
    resource_id: str | None = None
    resource_name: str | None = None
    actor_user_id: str | None = None
    actor_username: str | None = None
    owner_user_id: str | None = None
    payload: dict[str, Any] = {}
    request_id: str | None = None


def _filters(
    types: Sequence[str] | None,
    resource_type: str | None,
    resource_id: str | None,
    after: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if types:
        out["type"] = list(types)
    if resource_type:
        out["resource_type"] = resource_type
    if resource_id:
        out["resource_id"] = resource_id
    if after is not None:
        out["after"] = after
    return out


class _SseParser:
    """Turns ``text/event-stream`` lines into events (``id``/``event``/``data`` fields)."""

    def __init__(self) -> None:
        self.data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self.data:
                return None
            raw, self.data = "\n".join(self.data), []
            return Event.model_validate(json.loads(raw))
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self.data.append(value[1:] if value.startswith(" ") else value)
        return None


class Events(SyncCollection[Event]):
    """``client.events``: list events, or follow them live.

    Example:
        >>> for ev in client.events.list(types=["vm.*"], limit=20):
        ...     print(ev.id, ev.type, ev.resource_name)
        >>> for ev in client.events.stream(types=["vm.started", "vm.failed"]):
        ...     print(ev.type, ev.resource_id)   # runs until you break out
    """

    path = "/v1/events"
    model = Event

    def list(  # type: ignore[override]
        self,
        *,
        types: Sequence[str] | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        after: int | None = None,
        limit: int | None = None,
        page_size: int | None = None,
    ) -> SyncPager[Event]:
        """Events, newest first; with ``after``: oldest first from that id. ``types`` are
        patterns such as ``vm.*`` or ``*.failed``."""
        return super().list(
            limit=limit, page_size=page_size, **_filters(types, resource_type, resource_id, after)
        )

    def stream(
        self,
        *,
        after: int | None = None,
        types: Sequence[str] | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        reconnect: bool = True,
    ) -> Iterator[Event]:
        """Every event from ``after`` (None: from now on), live and in order. A dropped
        connection is resumed from the last event received: nothing is missed or repeated.
        Blocks between events; stop by breaking out of the loop."""
        http = self._http
        last = after
        failures = 0
        while True:
            params = _filters(types, resource_type, resource_id)
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            token = http.creds.token
            try:
                with http.client.stream(
                    "GET",
                    f"{self.path}/stream",
                    params=params,
                    headers=http._headers(token, headers),
                    timeout=httpx.Timeout(10.0, read=60.0),
                ) as resp:
                    if resp.status_code == 401 and http._may_refresh(self.path, token):
                        http._refresh(token)
                        continue
                    if resp.status_code >= 400:
                        resp.read()
                        raise error_from_response(resp)
                    failures = 0
                    parser = _SseParser()
                    for line in resp.iter_lines():
                        ev = parser.feed(line)
                        if ev is not None:
                            last = ev.id
                            yield ev
            except httpx.TransportError:
                if not reconnect:
                    raise
                failures += 1
                time.sleep(min(5.0, 0.2 * 2**failures))
                continue
            if not reconnect:
                return


class AsyncEvents(AsyncCollection[Event]):
    """``AsyncClient.events`` (see :class:`Events`)."""

    path = "/v1/events"
    model = Event

    def list(  # type: ignore[override]
        self,
        *,
        types: Sequence[str] | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        after: int | None = None,
        limit: int | None = None,
        page_size: int | None = None,
    ) -> AsyncPager[Event]:
        """Events, newest first; with ``after``: oldest first from that id."""
        return super().list(
            limit=limit, page_size=page_size, **_filters(types, resource_type, resource_id, after)
        )

    async def stream(
        self,
        *,
        after: int | None = None,
        types: Sequence[str] | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        reconnect: bool = True,
    ) -> AsyncIterator[Event]:
        """Every event from ``after`` (None: from now on), live, resumed after a drop."""
        import asyncio

        http = self._http
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            token = http.creds.token
            try:
                async with http.client.stream(
                    "GET",
                    f"{self.path}/stream",
                    params=_filters(types, resource_type, resource_id),
                    headers=http._headers(token, headers),
                    timeout=httpx.Timeout(10.0, read=60.0),
                ) as resp:
                    if resp.status_code == 401 and http._may_refresh(self.path, token):
                        await http._refresh(token)
                        continue
                    if resp.status_code >= 400:
                        await resp.aread()
                        raise error_from_response(resp)
                    failures = 0
                    parser = _SseParser()
                    async for line in resp.aiter_lines():
                        ev = parser.feed(line)
                        if ev is not None:
                            last = ev.id
                            yield ev
            except httpx.TransportError:
                if not reconnect:
                    raise
                failures += 1
                await asyncio.sleep(min(5.0, 0.2 * 2**failures))
                continue
            if not reconnect:
                return
