"""Features beyond the core register their routers and start-up hooks here.

Each entry is ``register(app)``: it includes its router(s) and may append coroutine functions
``hook(state)`` to ``app.state.startup_hooks`` (for loops and the embedded agent).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

REGISTRARS: list[Callable[[FastAPI], None]] = []


def _guest(app: FastAPI) -> None:
    """Exec, shells, console follow and metrics (features/guest)."""
    from nexus.manager.features.guest.routes import register

    register(app)


REGISTRARS.append(_guest)


def _snapshots_templates(app: FastAPI) -> None:
    """Snapshots, clones and templates (features/snapshots, features/templates)."""
    from nexus.manager.features.snapshots.routes import register as snapshots
    from nexus.manager.features.templates.routes import register as templates

    snapshots(app)
    templates(app)


REGISTRARS.append(_snapshots_templates)


def _hosts_first(app: FastAPI) -> None:
    """Hosts: the sealing key must be loaded before any hook reads a host row (agent
    tokens are sealed), so its start-up hook goes first."""
    from nexus.manager.features.hosts.service import start

    app.state.startup_hooks.insert(0, start)


REGISTRARS.append(_hosts_first)
