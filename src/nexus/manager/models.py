"""Imports every feature's ORM models so the metadata (and Alembic) sees all tables."""

from __future__ import annotations

from nexus.core.db import Base
from nexus.manager.features.audit import models as _audit
from nexus.manager.features.auth import models as _auth
from nexus.manager.features.operations import models as _operations
from nexus.manager.features.system import models as _system
from nexus.manager.features.users import models as _users

metadata = Base.metadata
__all__ = ["_audit", "_auth", "_operations", "_system", "_users", "metadata"]
