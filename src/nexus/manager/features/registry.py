"""The one list of the manager's features: what each adds to the app — its routers, its ORM
models (the database metadata and Alembic see exactly these), its start-up hooks.

``app.create_app`` includes the routers and runs the hooks in this order; ``manager.models``
collects the models from it. A new feature is one more :class:`Feature` here.

Order matters twice: routers are matched in list order on every request (the busy ones
early; no two share a path), and hooks run in list order at start-up — hosts first, since
its hook loads the sealing key before any other hook reads a host row (agent tokens are
sealed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType

from fastapi import APIRouter

from nexus.manager.features.audit import models as audit_models
from nexus.manager.features.audit import routes as audit_routes
from nexus.manager.features.auth import models as auth_models
from nexus.manager.features.auth import routes as auth_routes
from nexus.manager.features.backup import routes as backup_routes
from nexus.manager.features.containers import models as containers_models
from nexus.manager.features.containers import routes as containers_routes
from nexus.manager.features.containers import service as containers_service
from nexus.manager.features.events import models as events_models
from nexus.manager.features.events import routes as events_routes
from nexus.manager.features.events import service as events_service
from nexus.manager.features.functions import models as functions_models
from nexus.manager.features.functions import routes as functions_routes
from nexus.manager.features.functions import service as functions_service
from nexus.manager.features.groups import models as groups_models
from nexus.manager.features.groups import routes as groups_routes
from nexus.manager.features.guest import firstboot as guest_firstboot
from nexus.manager.features.guest import models as guest_models
from nexus.manager.features.guest import routes as guest_routes
from nexus.manager.features.guest import service as guest_service
from nexus.manager.features.health import routes as health_routes
from nexus.manager.features.hosts import models as hosts_models
from nexus.manager.features.hosts import routes as hosts_routes
from nexus.manager.features.hosts import service as hosts_service
from nexus.manager.features.images import models as images_models
from nexus.manager.features.images import routes as images_routes
from nexus.manager.features.monitoring import routes as monitoring_routes
from nexus.manager.features.networks import models as networks_models
from nexus.manager.features.networks import routes as networks_routes
from nexus.manager.features.networks import service as networks_service
from nexus.manager.features.notifications import models as notifications_models
from nexus.manager.features.notifications import routes as notifications_routes
from nexus.manager.features.notifications import service as notifications_service
from nexus.manager.features.operations import models as operations_models
from nexus.manager.features.operations import routes as operations_routes
from nexus.manager.features.portforwards import models as portforwards_models
from nexus.manager.features.portforwards import routes as portforwards_routes
from nexus.manager.features.quotas import models as quotas_models
from nexus.manager.features.quotas import routes as quotas_routes
from nexus.manager.features.schedules import models as schedules_models
from nexus.manager.features.schedules import routes as schedules_routes
from nexus.manager.features.snapshots import models as snapshots_models
from nexus.manager.features.snapshots import routes as snapshots_routes
from nexus.manager.features.system import models as system_models
from nexus.manager.features.system import routes as system_routes
from nexus.manager.features.templates import models as templates_models
from nexus.manager.features.templates import routes as templates_routes
from nexus.manager.features.ttl import routes as ttl_routes
from nexus.manager.features.users import models as users_models
from nexus.manager.features.users import routes as users_routes
from nexus.manager.features.vms import models as vms_models
from nexus.manager.features.vms import routes as vms_routes
from nexus.manager.features.volumes import models as volumes_models
from nexus.manager.features.volumes import routes as volumes_routes
from nexus.manager.features.webhooks import models as webhooks_models
from nexus.manager.features.webhooks import routes as webhooks_routes
from nexus.manager.features.webhooks import service as webhooks_service
from nexus.manager.platform.appstate import ManagerState

#: A coroutine function run once at start-up (it may spawn loops with ``state.spawn``).
StartupHook = Callable[[ManagerState], Awaitable[None]]


@dataclass(frozen=True)
class Feature:
    """One resource package under ``manager/features``, as the app sees it."""

    name: str
    routers: tuple[APIRouter, ...] = ()
    models: ModuleType | None = None
    hooks: tuple[StartupHook, ...] = ()


FEATURES: tuple[Feature, ...] = (
    Feature("hosts", (hosts_routes.router,), hosts_models, (hosts_service.start,)),
    Feature("vms", (vms_routes.router,), vms_models),
    Feature("operations", (operations_routes.router,), operations_models),
    Feature("health", (health_routes.router,)),
    Feature("auth", (auth_routes.router,), auth_models),
    Feature("users", (users_routes.router,), users_models),
    Feature("audit", (audit_routes.router,), audit_models),
    Feature("images", (images_routes.router,), images_models),
    Feature(
        "networks", (networks_routes.router,), networks_models, (networks_service.ensure_default,)
    ),
    Feature("portforwards", (portforwards_routes.router,), portforwards_models),
    Feature("volumes", (volumes_routes.router, volumes_routes.vm_router), volumes_models),
    Feature(
        "guest",
        (guest_routes.router,),
        guest_models,
        (guest_service.start_sampler, guest_firstboot.start),
    ),
    Feature("snapshots", (snapshots_routes.vm_router, snapshots_routes.router), snapshots_models),
    Feature("templates", (templates_routes.router,), templates_models),
    Feature("system", (system_routes.router,), system_models),
    Feature("monitoring", (monitoring_routes.router,)),
    Feature("backup", (backup_routes.router,)),
    Feature("events", (events_routes.router,), events_models, (events_service.start,)),
    Feature(
        "notifications",
        (notifications_routes.router,),
        notifications_models,
        (notifications_service.start,),
    ),
    Feature("webhooks", (webhooks_routes.router,), webhooks_models, (webhooks_service.start,)),
    Feature("quotas", (quotas_routes.router,), quotas_models),
    Feature("schedules", (schedules_routes.router,), schedules_models),
    Feature("groups", (groups_routes.router,), groups_models),
    Feature("ttl", (ttl_routes.router,)),
    Feature("functions", (functions_routes.router,), functions_models, (functions_service.start,)),
    Feature(
        "containers",
        (containers_routes.images_router, containers_routes.router),
        containers_models,
        (containers_service.start,),
    ),
)


def routers() -> list[APIRouter]:
    """Every feature's routers, in matching order."""
    return [r for f in FEATURES for r in f.routers]


def startup_hooks() -> list[StartupHook]:
    """Every feature's start-up hooks, in order."""
    return [h for f in FEATURES for h in f.hooks]


def model_modules() -> list[ModuleType]:
    """Every feature's ORM models module."""
    return [f.models for f in FEATURES if f.models is not None]
