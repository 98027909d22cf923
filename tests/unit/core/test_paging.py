"""The opaque cursors of the one list shape."""

from __future__ import annotations

import pytest

from nexus.core.errors import ValidationFailed
from nexus.core.paging import cursor_offset, offset_cursor, page_of


def test_cursors_round_trip_and_reject_strangers() -> None:
    for n in (0, 1, 2, 99, 123_456_789):
        assert cursor_offset(offset_cursor(n)) == n
    assert cursor_offset(None) == 0 and cursor_offset("") == 0
    for bad in ("x", "not-a-cursor", offset_cursor(1)[:-1] + "!", "bzotMQ", "%%%%"):
        with pytest.raises(ValidationFailed):
            cursor_offset(bad)


def test_page_of_walks_a_list_once() -> None:
    items = list(range(7))
    seen, cursor = [], None
    while True:
        chunk, cursor = page_of(items, cursor, 3)
        seen += chunk
        if cursor is None:
            break
    assert seen == items
    assert page_of(items, None, 7) == (items, None)
    assert page_of([], None, 5) == ([], None)
