"""The agent's heartbeat loop sends at its interval, and at once when a VM's state changes
(the manager's reconciler trusts heartbeats that agree with its rows)."""

from __future__ import annotations

import asyncio
import time

import pytest

from nexus.agent import registration
from nexus.hostapi.models import HostFacts, VmStatus


class Runtime:
    def __init__(self) -> None:
        self.vms = [VmStatus(id="vm_a", state="running", guest_ready=True)]

    def facts(self) -> HostFacts:  # pragma: no cover - not called here
        raise AssertionError

    def list(self) -> list[VmStatus]:
        return [v.model_copy() for v in self.vms]


async def test_waits_the_interval_when_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = Runtime()
    monkeypatch.setattr(registration, "STATE_CHECK_S", 0.02)
    began = time.monotonic()
    await registration._until_due(0.15, rt, registration._signature(rt.list()))
    assert time.monotonic() - began >= 0.14


async def test_returns_early_when_a_vm_state_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = Runtime()
    monkeypatch.setattr(registration, "STATE_CHECK_S", 0.02)
    sent = registration._signature(rt.list())

    async def crash() -> None:
        await asyncio.sleep(0.05)
        rt.vms[0].state = "failed"

    began = time.monotonic()
    task = asyncio.create_task(crash())
    await registration._until_due(30.0, rt, sent)
    await task
    assert time.monotonic() - began < 5.0
