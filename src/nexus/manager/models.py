"""The database metadata of every feature's ORM models (for Alembic and test set-up): the
models are those of :data:`nexus.manager.features.registry.FEATURES`."""

from __future__ import annotations

from nexus.core.db import Base
from nexus.manager.features import registry

MODEL_MODULES = registry.model_modules()
metadata = Base.metadata
__all__ = ["MODEL_MODULES", "metadata"]
