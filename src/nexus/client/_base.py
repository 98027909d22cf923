"""Building blocks of every resource: the model base, pagers and the collection bases.

A resource module (``_resources/<name>.py``) declares a :class:`Resource` model and a pair of
collections that subclass :class:`SyncCollection` / :class:`AsyncCollection` with ``path``,
``model`` and ``pagination``; the bases supply ``get``, ``list``, ``_create``, ``_update``,
``_delete`` and operation handling (``202 Accepted`` + ``wait=True``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from nexus.client._errors import OperationFailed
from nexus.client._models import Operation, Resource

__all__ = [
    "AsyncCollection",
    "AsyncPager",
    "Operation",
    "Page",
    "Resource",
    "SyncCollection",
    "SyncPager",
]

if TYPE_CHECKING:
    import httpx

    from nexus.client._http import AsyncHttp, SyncHttp


T = TypeVar("T", bound=Resource)
Pagination = Literal["offset", "cursor", "none"]


@dataclass
class Page(Generic[T]):
    """One page of a listing; ``next_cursor`` is None on the last cursor page."""

    items: list[T]
    next_cursor: str | None = None


class SyncPager(Generic[T]):
    """Lazily iterates every item of a listing, fetching pages on demand.

    Example:
        >>> for user in client.users.list():
        ...     print(user.username)
        >>> first_page = next(client.audit.list(page_size=50).pages())
    """

    def __init__(
        self,
        fetch: Callable[[str | int | None, int], Page[T]],
        page_size: int,
        limit: int | None,
        pagination: Pagination,
    ) -> None:
        self._fetch = fetch
        self._page_size = page_size
        self._limit = limit
        self._pagination = pagination

    def pages(self) -> Iterator[Page[T]]:
        """Iterate page by page."""
        pos: str | int | None = 0 if self._pagination == "offset" else None
        seen = 0
        while True:
            size = self._page_size
            if self._limit is not None:
                size = min(size, self._limit - seen)
                if size <= 0:
                    return
            page = self._fetch(pos, size)
            if self._limit is not None:
                page.items = page.items[: self._limit - seen]
            seen += len(page.items)
            yield page
            if self._pagination == "none" or not page.items:
                return
            if self._pagination == "cursor":
                if not page.next_cursor:
                    return
                pos = page.next_cursor
            else:
                if len(page.items) < size:
                    return
                pos = int(pos or 0) + len(page.items)

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.items

    def to_list(self) -> list[T]:
        """Fetch everything into a list."""
        return list(self)


class AsyncPager(Generic[T]):
    """The async twin of :class:`SyncPager`: ``async for item in pager``.

    Example:
        >>> async for event in client.audit.list(action="user.create"):
        ...     print(event.at, event.resource_id)
    """

    def __init__(
        self,
        fetch: Callable[[str | int | None, int], Awaitable[Page[T]]],
        page_size: int,
        limit: int | None,
        pagination: Pagination,
    ) -> None:
        self._fetch = fetch
        self._page_size = page_size
        self._limit = limit
        self._pagination = pagination

    async def pages(self) -> AsyncIterator[Page[T]]:
        """Iterate page by page."""
        pos: str | int | None = 0 if self._pagination == "offset" else None
        seen = 0
        while True:
            size = self._page_size
            if self._limit is not None:
                size = min(size, self._limit - seen)
                if size <= 0:
                    return
            page = await self._fetch(pos, size)
            if self._limit is not None:
                page.items = page.items[: self._limit - seen]
            seen += len(page.items)
            yield page
            if self._pagination == "none" or not page.items:
                return
            if self._pagination == "cursor":
                if not page.next_cursor:
                    return
                pos = page.next_cursor
            else:
                if len(page.items) < size:
                    return
                pos = int(pos or 0) + len(page.items)

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.items:
                yield item

    async def to_list(self) -> list[T]:
        """Fetch everything into a list."""
        return [item async for item in self]


def _page_params(pagination: Pagination, pos: str | int | None, size: int) -> dict[str, Any]:
    if pagination == "offset":
        return {"limit": size, "offset": pos or 0}
    if pagination == "cursor":
        return {"limit": size, "cursor": pos} if pos else {"limit": size}
    return {}


def _parse_page(model: type[T], pagination: Pagination, data: Any) -> Page[T]:
    if isinstance(data, dict) and "items" in data:
        return Page([model.model_validate(x) for x in data["items"]], data.get("next_cursor"))
    return Page([model.model_validate(x) for x in data])


def sync_listing(
    http: SyncHttp,
    path: str,
    model: type[T],
    filters: dict[str, Any] | None = None,
    *,
    limit: int | None = None,
    page_size: int = 100,
) -> SyncPager[T]:
    """A pager over any cursor-paged listing at ``path`` (``GET path?limit=&cursor=``)."""

    def fetch(pos: str | int | None, size: int) -> Page[T]:
        params = {**(filters or {}), **_page_params("cursor", pos, size)}
        return _parse_page(model, "cursor", http.request("GET", path, params=params).json())

    return SyncPager(fetch, page_size, limit, "cursor")


def async_listing(
    http: AsyncHttp,
    path: str,
    model: type[T],
    filters: dict[str, Any] | None = None,
    *,
    limit: int | None = None,
    page_size: int = 100,
) -> AsyncPager[T]:
    """The async twin of :func:`sync_listing`."""

    async def fetch(pos: str | int | None, size: int) -> Page[T]:
        params = {**(filters or {}), **_page_params("cursor", pos, size)}
        data = (await http.request("GET", path, params=params)).json()
        return _parse_page(model, "cursor", data)

    return AsyncPager(fetch, page_size, limit, "cursor")


def _is_operation(resp: httpx.Response) -> bool:
    if resp.status_code != 202:
        return False
    data = resp.json()
    return isinstance(data, dict) and str(data.get("id", "")).startswith("op") and "status" in data


class _CollectionSpec(Generic[T]):
    """What a resource declares: where it lives and how it pages."""

    path: ClassVar[str]
    """Collection path, e.g. ``/v1/users``; items live at ``{path}/{id}``."""
    model: type[T]
    """The pydantic model of one item."""
    pagination: ClassVar[Pagination] = "cursor"
    """Every listing of the API is ``cursor`` (``limit``/``cursor`` params, ``{items,
    next_cursor}``); ``offset`` and ``none`` remain for servers older than 0.2."""
    default_page_size: ClassVar[int] = 100

    def _item_path(self, id: str) -> str:
        return f"{self.path}/{id}"


class SyncCollection(_CollectionSpec[T]):
    """Base of blocking collections (``client.users`` ...)."""

    def __init__(self, http: SyncHttp, client: Any) -> None:
        self._http = http
        self._client = client

    def get(self, id: str) -> T:
        """Fetch one item by id (raises :class:`~nexus.client.NotFound`)."""
        return self.model.model_validate(self._http.request("GET", self._item_path(id)).json())

    def list(
        self, *, limit: int | None = None, page_size: int | None = None, **filters: Any
    ) -> SyncPager[T]:
        """Iterate items (all pages, or at most ``limit``); ``filters`` become query params."""

        def fetch(pos: str | int | None, size: int) -> Page[T]:
            params = {**filters, **_page_params(self.pagination, pos, size)}
            data = self._http.request("GET", self.path, params=params).json()
            return _parse_page(self.model, self.pagination, data)

        return SyncPager(fetch, page_size or self.default_page_size, limit, self.pagination)

    def _create(
        self, body: dict[str, Any], *, wait: bool = True, timeout: float | None = None
    ) -> Any:
        resp = self._http.request("POST", self.path, json=_body(body))
        return self._result(resp, wait=wait, timeout=timeout)

    def _update(
        self,
        id: str,
        body: dict[str, Any],
        *,
        wait: bool = True,
        timeout: float | None = None,
        method: str = "PATCH",
    ) -> Any:
        resp = self._http.request(method, self._item_path(id), json=_body(body))
        return self._result(resp, wait=wait, timeout=timeout, id=id)

    def _action(
        self,
        id: str,
        action: str,
        body: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """``POST {path}/{id}/{action}`` (start, stop, ...), waiting for its operation."""
        resp = self._http.request("POST", f"{self._item_path(id)}/{action}", json=_body(body))
        return self._result(resp, wait=wait, timeout=timeout, id=id)

    def delete(self, id: str, *, wait: bool = True, timeout: float | None = None) -> Any:
        """Delete an item. If the server answers with an operation: waits for it (``wait``)
        and returns None, or returns the :class:`~nexus.client.Operation` (``wait=False``)."""
        resp = self._http.request("DELETE", self._item_path(id))
        if _is_operation(resp):
            op = self._client.operations._model(resp.json())
            if not wait:
                return op
            _raise_if_failed(self._client.operations.wait(op.id, timeout=timeout))
        return None

    def _result(
        self, resp: httpx.Response, *, wait: bool, timeout: float | None, id: str | None = None
    ) -> Any:
        if resp.status_code == 204:
            return None
        if not _is_operation(resp):
            return self.model.model_validate(resp.json())
        op: Operation = self._client.operations._model(resp.json())
        if not wait:
            return op
        op = _raise_if_failed(self._client.operations.wait(op.id, timeout=timeout))
        return self.get(_resource_id(op, id))


class AsyncCollection(_CollectionSpec[T]):
    """Base of async collections (``AsyncClient.users`` ...)."""

    def __init__(self, http: AsyncHttp, client: Any) -> None:
        self._http = http
        self._client = client

    async def get(self, id: str) -> T:
        """Fetch one item by id (raises :class:`~nexus.client.NotFound`)."""
        resp = await self._http.request("GET", self._item_path(id))
        return self.model.model_validate(resp.json())

    def list(
        self, *, limit: int | None = None, page_size: int | None = None, **filters: Any
    ) -> AsyncPager[T]:
        """Iterate items with ``async for`` (all pages, or at most ``limit``)."""

        async def fetch(pos: str | int | None, size: int) -> Page[T]:
            params = {**filters, **_page_params(self.pagination, pos, size)}
            data = (await self._http.request("GET", self.path, params=params)).json()
            return _parse_page(self.model, self.pagination, data)

        return AsyncPager(fetch, page_size or self.default_page_size, limit, self.pagination)

    async def _create(
        self, body: dict[str, Any], *, wait: bool = True, timeout: float | None = None
    ) -> Any:
        resp = await self._http.request("POST", self.path, json=_body(body))
        return await self._result(resp, wait=wait, timeout=timeout)

    async def _update(
        self,
        id: str,
        body: dict[str, Any],
        *,
        wait: bool = True,
        timeout: float | None = None,
        method: str = "PATCH",
    ) -> Any:
        resp = await self._http.request(method, self._item_path(id), json=_body(body))
        return await self._result(resp, wait=wait, timeout=timeout, id=id)

    async def _action(
        self,
        id: str,
        action: str,
        body: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """``POST {path}/{id}/{action}``, waiting for its operation."""
        resp = await self._http.request("POST", f"{self._item_path(id)}/{action}", json=_body(body))
        return await self._result(resp, wait=wait, timeout=timeout, id=id)

    async def delete(self, id: str, *, wait: bool = True, timeout: float | None = None) -> Any:
        """Delete an item (see :meth:`SyncCollection.delete`)."""
        resp = await self._http.request("DELETE", self._item_path(id))
        if _is_operation(resp):
            op = self._client.operations._model(resp.json())
            if not wait:
                return op
            _raise_if_failed(await self._client.operations.wait(op.id, timeout=timeout))
        return None

    async def _result(
        self, resp: httpx.Response, *, wait: bool, timeout: float | None, id: str | None = None
    ) -> Any:
        if resp.status_code == 204:
            return None
        if not _is_operation(resp):
            return self.model.model_validate(resp.json())
        op: Operation = self._client.operations._model(resp.json())
        if not wait:
            return op
        op = _raise_if_failed(await self._client.operations.wait(op.id, timeout=timeout))
        return await self.get(_resource_id(op, id))


def _body(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """Drop unset (None) fields so the server applies its defaults."""
    if body is None:
        return None
    return {k: v for k, v in body.items() if v is not None}


def _raise_if_failed(op: Operation) -> Operation:
    if op.status != "succeeded":
        raise OperationFailed(op)
    return op


def _resource_id(op: Operation, fallback: str | None) -> str:
    rid = op.resource_id or (op.result or {}).get("id") or fallback
    if not rid:
        raise OperationFailed(op)
    return str(rid)
