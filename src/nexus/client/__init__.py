"""The Nexus Python SDK: a typed client for the manager's REST API (sync and async).

Everything public is listed in ``__all__`` below; modules starting with ``_`` are internal.

Example:
    >>> from nexus.client import Client, NotFound
    >>> with Client.login("http://127.0.0.1:8080", "admin", "adminpass123") as client:
    ...     alice = client.users.create("alice", "correct-horse", role="operator")
    ...     for event in client.audit.list(resource_id=alice.id):
    ...         print(event.action, event.outcome)
    ...     try:
    ...         client.users.get("usr_missing")
    ...     except NotFound as e:
    ...         print(e.detail, e.request_id)

See ``docs/sdk.md`` for the full guide.
"""

from nexus import __version__
from nexus.client._base import (
    AsyncCollection,
    AsyncPager,
    Page,
    Resource,
    SyncCollection,
    SyncPager,
)
from nexus.client._client import AsyncClient, Client, Health, Me, VersionInfo
from nexus.client._errors import (
    Conflict,
    Forbidden,
    InsufficientStorage,
    NexusConnectionError,
    NexusError,
    NotFound,
    OperationFailed,
    OperationTimeout,
    RateLimited,
    ServerError,
    Unauthorized,
    ValidationError,
)
from nexus.client._http import TokenPair
from nexus.client._resources.audit import AuditEvent
from nexus.client._resources.containers import (
    Container,
    ContainerExecResult,
    ContainerImage,
    ContainerShellTicket,
    LogLine,
)
from nexus.client._resources.events import Event
from nexus.client._resources.functions import Function, FunctionVersion, Invocation
from nexus.client._resources.groups import Group
from nexus.client._resources.guest import ExecResult, MetricSample, MetricsHistory, WsTicket
from nexus.client._resources.hosts import Host, HostMetrics, JoinToken, Leader
from nexus.client._resources.images import Image
from nexus.client._resources.networks import Network
from nexus.client._resources.notifications import Notification, NotificationPreferences
from nexus.client._resources.operations import Operation
from nexus.client._resources.portforwards import PortForward
from nexus.client._resources.quotas import Quota
from nexus.client._resources.schedules import Schedule, ScheduleRun
from nexus.client._resources.snapshots import Snapshot, Template
from nexus.client._resources.tokens import ApiToken, ApiTokenCreated
from nexus.client._resources.users import User
from nexus.client._resources.vms import Vm, VmFirstBoot, VmNic
from nexus.client._resources.volumes import Volume, VolumeAttachment
from nexus.client._resources.webhooks import Webhook, WebhookCreated, WebhookDelivery

__all__ = [
    "ApiToken",
    "ApiTokenCreated",
    "AsyncClient",
    "AsyncCollection",
    "AsyncPager",
    "AuditEvent",
    "Client",
    "Conflict",
    "Container",
    "ContainerExecResult",
    "ContainerImage",
    "ContainerShellTicket",
    "Event",
    "ExecResult",
    "Forbidden",
    "Function",
    "FunctionVersion",
    "Group",
    "Health",
    "Host",
    "HostMetrics",
    "Image",
    "InsufficientStorage",
    "Invocation",
    "JoinToken",
    "Leader",
    "LogLine",
    "Me",
    "MetricSample",
    "MetricsHistory",
    "Network",
    "NexusConnectionError",
    "NexusError",
    "NotFound",
    "Notification",
    "NotificationPreferences",
    "Operation",
    "OperationFailed",
    "OperationTimeout",
    "Page",
    "PortForward",
    "Quota",
    "RateLimited",
    "Resource",
    "Schedule",
    "ScheduleRun",
    "ServerError",
    "Snapshot",
    "SyncCollection",
    "SyncPager",
    "Template",
    "TokenPair",
    "Unauthorized",
    "User",
    "ValidationError",
    "VersionInfo",
    "Vm",
    "VmFirstBoot",
    "VmNic",
    "Volume",
    "VolumeAttachment",
    "Webhook",
    "WebhookCreated",
    "WebhookDelivery",
    "WsTicket",
    "__version__",
]
