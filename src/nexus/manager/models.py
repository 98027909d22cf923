"""Imports every feature's ORM models so the metadata (and Alembic) sees all tables."""

from __future__ import annotations

from nexus.core.db import Base
from nexus.manager.features.audit import models as _audit
from nexus.manager.features.auth import models as _auth
from nexus.manager.features.guest import models as _guest
from nexus.manager.features.hosts import models as _hosts
from nexus.manager.features.images import models as _images
from nexus.manager.features.networks import models as _networks
from nexus.manager.features.operations import models as _operations
from nexus.manager.features.portforwards import models as _portforwards
from nexus.manager.features.snapshots import models as _snapshots
from nexus.manager.features.system import models as _system
from nexus.manager.features.templates import models as _templates
from nexus.manager.features.users import models as _users
from nexus.manager.features.vms import models as _vms
from nexus.manager.features.volumes import models as _volumes

metadata = Base.metadata
__all__ = [
    "_audit",
    "_auth",
    "_guest",
    "_hosts",
    "_images",
    "_networks",
    "_operations",
    "_portforwards",
    "_snapshots",
    "_system",
    "_templates",
    "_users",
    "_vms",
    "_volumes",
    "metadata",
]
