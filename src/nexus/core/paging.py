"""The one list shape of the API: ``{"items": [...], "next_cursor": "..." | null}``.

Every collection endpoint takes ``limit`` and an opaque ``cursor`` (the ``next_cursor`` of the
previous page) and answers a :class:`Page`; ``next_cursor`` is null on the last page. Cursors
are opaque to clients: most collections encode a position (:func:`offset_cursor`), the audit
log a keyset position (the last event id). A cursor that does not decode is a 422.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Generic, TypeVar

from pydantic import BaseModel, Field

from nexus.core.errors import ValidationFailed

T = TypeVar("T")
CURSOR_MAX_LEN = 64
LIMIT_DOC = "page size: at most this many items"
CURSOR_DOC = "the `next_cursor` of the previous page (omit for the first page)"
_PREFIX = "o:"


class Page(BaseModel, Generic[T]):
    """A page of a listing; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[T]
    next_cursor: str | None = Field(
        default=None, description="the cursor of the next page; null on the last page"
    )


def offset_cursor(offset: int) -> str:
    """The opaque cursor of position ``offset``."""
    return base64.urlsafe_b64encode(f"{_PREFIX}{offset}".encode()).decode().rstrip("=")


def cursor_offset(cursor: str | None) -> int:
    """The position a cursor made by :func:`offset_cursor` stands for (0 for none); raises
    :class:`ValidationFailed` for anything else."""
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    digits = raw[len(_PREFIX) :] if raw.startswith(_PREFIX) else ""
    if not digits.isdigit() or len(digits) > 9:
        raise ValidationFailed(
            "cursor: not a cursor of this listing (pass the previous page's next_cursor)",
            extra={"errors": [{"loc": "query.cursor", "msg": "invalid cursor", "type": "value"}]},
        )
    return int(digits)


def next_offset_cursor(offset: int, returned: int, limit: int, has_more: bool) -> str | None:
    """The cursor after a page of ``returned`` items read at ``offset`` (None when last)."""
    if not has_more or returned < limit:
        return None
    return offset_cursor(offset + returned)


def page_of(items: Sequence[T], cursor: str | None, limit: int) -> tuple[list[T], str | None]:
    """Slice an in-memory, already ordered listing: (the page's items, the next cursor)."""
    offset = cursor_offset(cursor)
    chunk = list(items[offset : offset + limit])
    more = offset + limit < len(items)
    return chunk, next_offset_cursor(offset, len(chunk), limit, more)


_KEY_PREFIX = "k:"
KEY_CURSOR_MAX_LEN = 256


def key_cursor(key: str) -> str:
    """The opaque keyset cursor after the row whose sort key is ``key`` (a listing ordered
    by a unique column: the next page is ``WHERE column > key``, cheap at any depth)."""
    return base64.urlsafe_b64encode(f"{_KEY_PREFIX}{key}".encode()).decode().rstrip("=")


def cursor_key(cursor: str | None) -> str | None:
    """The sort key a cursor made by :func:`key_cursor` stands for (None for no cursor);
    raises :class:`ValidationFailed` for anything else."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith(_KEY_PREFIX) or len(raw) == len(_KEY_PREFIX):
        raise ValidationFailed(
            "cursor: not a cursor of this listing (pass the previous page's next_cursor)",
            extra={"errors": [{"loc": "query.cursor", "msg": "invalid cursor", "type": "value"}]},
        )
    return raw[len(_KEY_PREFIX) :]
