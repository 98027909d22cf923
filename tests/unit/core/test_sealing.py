"""Sealed values: sealed with the current key, opened with any known key, remembered once
opened (a thousand hosts' agent tokens are read every few seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet

from nexus.core import sealing


@pytest.fixture(autouse=True)
def _keys() -> Iterator[None]:
    saved_known, saved_current = dict(sealing._known), sealing._current
    yield
    sealing._known.clear()
    sealing._known.update(saved_known)
    sealing._current = saved_current
    sealing._opened.clear()


def test_seal_unseal_and_the_opened_memo() -> None:
    k1 = Fernet.generate_key().decode()
    sealing._known.clear()
    sealing.configure([k1])
    sealed = sealing.seal("agent-token-1")
    assert sealing.is_sealed(sealed) and "agent-token-1" not in sealed
    assert sealing.unseal(sealed) == "agent-token-1"
    assert sealing._opened[sealed] == "agent-token-1"  # remembered
    # a new key set forgets what was opened; a key once known still opens its values
    sealing.configure([Fernet.generate_key().decode()])
    assert sealed not in sealing._opened
    assert sealing.unseal(sealed) == "agent-token-1"
    sealing._known.clear()
    sealing._opened.clear()
    sealing.configure([Fernet.generate_key().decode()])
    with pytest.raises(sealing.SealingError):
        sealing.unseal(sealed)
