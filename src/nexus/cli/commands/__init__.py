"""CLI command modules: one per resource, each exposing ``register(app: typer.Typer)``.

To add a resource: write ``commands/<resource>.py`` (see ``users.py`` for the pattern) and
append it to :data:`MODULES`. Order here is the order in ``nexus --help``.
"""

from __future__ import annotations

from types import ModuleType

from nexus.cli.commands import (
    audit,
    auth,
    containers,
    contexts,
    events,
    functions,
    hosts,
    images,
    networks,
    operations,
    policies,
    portforwards,
    quotas,
    snapshots,
    templates,
    users,
    version,
    vm_guest,
    vms,
    volumes,
)

MODULES: list[ModuleType] = [
    auth,
    vms,
    vm_guest,
    snapshots,
    templates,
    policies,
    functions,
    containers,
    images,
    networks,
    volumes,
    portforwards,
    hosts,
    users,
    quotas,
    audit,
    operations,
    events,
    contexts,
    version,
]
