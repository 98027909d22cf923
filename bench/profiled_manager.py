"""``nexus-manager serve`` under pyinstrument (for the ``api_ratio`` profile).

    python -m bench.profiled_manager OUT_PREFIX|- PORT

With ``-`` it only serves (no profiler): the bench runs every manager through this file so
that ``BENCH_VCPU_OVERCOMMIT`` can lift the placement cap for the 10-VM density run.

Same app and uvicorn options as :func:`nexus.manager.admin_cli.serve`, settings from the
environment. The event-loop thread is sampled every 2 ms; on SIGINT/SIGTERM uvicorn
stops, and the profile is written to ``OUT_PREFIX.txt`` plus a per-package summary in
``OUT_PREFIX.json``.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import uvicorn
from pyinstrument import Profiler

from nexus.core.settings import load_settings
from nexus.manager.app import create_app

PACKAGES = (
    "sqlalchemy",
    "aiosqlite",
    "pydantic_core",
    "pydantic",
    "fastapi",
    "starlette",
    "uvicorn",
    "h11",
    "httptools",
    "jwt",
    "opentelemetry",
    "prometheus_client",
    "structlog",
    "limits",
    "argon2",
    "nexus",
    "asyncio",
    "selectors",
    "json",
    "logging",
    "contextvars",
)


def bucket(frame: Any) -> str:
    """The package a frame's code belongs to (``other`` if none of :data:`PACKAGES`)."""
    path = (frame.file_path or "").replace("\\", "/")
    if not path:
        return "thread root (event loop idle)"
    for pkg in PACKAGES:
        if f"/{pkg}/" in path or path.endswith(f"/{pkg}.py"):
            return pkg
    if "<built-in>" in path:
        return "builtins"
    return "other"


def summarize(root: Any) -> dict[str, Any]:
    """Self time per package and the top functions by self time."""
    per_pkg: dict[str, float] = defaultdict(float)
    per_fn: dict[str, float] = defaultdict(float)

    def walk(frame: Any) -> None:
        # synthetic [self]/[await] children are already part of their parent's self time
        self_time = 0.0 if frame.is_synthetic else frame.total_self_time
        if self_time > 0:
            per_pkg[bucket(frame)] += self_time
            key = f"{frame.function} ({Path(frame.file_path or '?').name}:{frame.line_no})"
            per_fn[key] += self_time
        for child in frame.children:
            walk(child)

    walk(root)
    total = sum(per_pkg.values()) or 1.0
    return {
        "total_s": round(total, 3),
        "self_time_by_package": {
            k: {"s": round(v, 3), "pct": round(100 * v / total, 1)}
            for k, v in sorted(per_pkg.items(), key=lambda kv: -kv[1])
        },
        "top_functions_self": [
            {"function": k, "s": round(v, 3), "pct": round(100 * v / total, 1)}
            for k, v in sorted(per_fn.items(), key=lambda kv: -kv[1])[:25]
        ],
    }


def main() -> None:
    """Run the manager until signalled; with an OUT_PREFIX other than ``-``, profile it."""
    overcommit = os.environ.get("BENCH_VCPU_OVERCOMMIT")
    if overcommit:  # placement allows 4 vCPUs per core (hard-coded): 8 VMs on 2 cores
        from nexus.manager.features.hosts import service

        service.VCPU_OVERCOMMIT = int(overcommit)  # placement reads it from hosts.service
    out = Path(sys.argv[1])
    settings = load_settings(None, host="127.0.0.1", port=int(sys.argv[2]))
    app = create_app(settings)
    if sys.argv[1] == "-":
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
        )
        return
    profiler = Profiler(interval=0.002, async_mode="disabled")
    profiler.start()
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
        )
    finally:
        profiler.stop()
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        out.with_suffix(".txt").write_text(text)
        session = profiler.last_session
        root = session.root_frame() if session else None
        summary = summarize(root) if root is not None else {}
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
