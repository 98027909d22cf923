"""The agent's side of the guest-channel bounds: its own exec ceilings (it does not trust
the caller's numbers, nor the guest's cap) and the disconnect reason in the VM status that
heartbeats and ``GET /v1/vms`` carry to the manager."""

from __future__ import annotations

from pathlib import Path

from nexus.agent.api.guest import exec_limits
from nexus.agent.runtime import AgentRuntime
from nexus.core.settings import Settings
from nexus.hostapi.models import AgentExecRequest

from .conftest import make_spec


def test_exec_limits_clamp_to_the_hosts_ceilings(settings: Settings) -> None:
    s = settings.model_copy(
        update={"max_exec_output_bytes": 1024 * 1024, "max_exec_timeout_s": 600.0}
    )
    # a caller asking for 64 MiB of output and a day: clamped
    req = AgentExecRequest(argv=["x"], timeout_s=86400, max_output=64 * 1024 * 1024)
    assert exec_limits(s, req) == (600.0, 1024 * 1024)
    # "no timeout" (0) becomes the ceiling, never unbounded
    assert exec_limits(s, AgentExecRequest(argv=["x"], timeout_s=0))[0] == 600.0
    # within the ceilings: the request's own numbers
    assert exec_limits(s, AgentExecRequest(argv=["x"], timeout_s=5, max_output=100)) == (5, 100)


async def test_vm_status_reports_the_guest_channel_violation(
    runtime: AgentRuntime, image_dir: Path
) -> None:
    await runtime.put_vm(make_spec(image_dir))
    assert runtime.status("vm-1").guest_channel_error is None
    runtime.guests.violations["vm-1"] = "the guest flooded its channel"
    assert runtime.status("vm-1").guest_channel_error == "the guest flooded its channel"
    assert [v.guest_channel_error for v in runtime.list()] == ["the guest flooded its channel"]
