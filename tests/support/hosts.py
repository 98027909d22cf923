"""Host facts as an agent reports them, for tests that register hosts by hand."""

from __future__ import annotations

from typing import Any

HOST_FACTS: dict[str, Any] = {
    "hostname": "h",
    "driver": "qemu",
    "accel": "tcg",
    "vcpus": 2,
    "memory_mib": 2048,
    "disk_free_mib": 10000,
    "version": "test",
}
"""What every agent reports (registration and heartbeats)."""

LIVE_FACTS: dict[str, Any] = {
    "load_avg": [0.5, 0.25, 0.125],
    "mem_available_mib": 1500,
    "disk_total_mib": 40000,
    "uptime_s": 12345.5,
    "vmm_rss_mib": 300,
}
"""The live facts newer agents add to each heartbeat (host metrics)."""
