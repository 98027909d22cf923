"""Role-based access control: the principal and the ``can_*`` helpers every service uses.

Roles: ``admin`` (everything), ``operator`` (create; modify/delete own), ``viewer`` (read own or
shared). A resource the caller may not *see* answers 404 (:func:`ensure_visible`), one it may see
but not change answers 403 (:func:`ensure_can_modify`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from nexus.core.errors import Forbidden, NotFound

Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer")
Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    user_id: str
    username: str
    role: Role
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(SCOPES))
    token_id: str | None = None  # API token id, or None for a JWT session
    session_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_write(self) -> bool:
        return "write" in self.scopes and self.role != "viewer"


class Owned(Protocol):
    """Anything with an owner (every resource row)."""

    @property
    def id(self) -> str: ...

    @property
    def created_by_user_id(self) -> str: ...


T = TypeVar("T", bound=Owned)


def is_shared(obj: Any) -> bool:
    """True when a resource is visible to every user (e.g. a public template)."""
    return bool(getattr(obj, "public", False))


def can_view(p: Principal, obj: Owned) -> bool:
    """Admins see all; others see what they own or what is shared."""
    return p.is_admin or obj.created_by_user_id == p.user_id or is_shared(obj)


def can_modify(p: Principal, obj: Owned) -> bool:
    """Admins modify all; operators modify what they own; viewers nothing."""
    if p.is_admin:
        return True
    return p.role == "operator" and obj.created_by_user_id == p.user_id


def can_delete(p: Principal, obj: Owned) -> bool:
    """Same rule as :func:`can_modify`."""
    return can_modify(p, obj)


def denial(action: str, resource_type: str, resource_id: str | None = None) -> dict[str, Any]:
    """The audit payload attached to a Forbidden/NotFound raised for a denied attempt."""
    return {"action": action, "resource_type": resource_type, "resource_id": resource_id}


def ensure_visible(p: Principal, obj: T | None, resource_type: str, ident: str) -> T:
    """Return ``obj`` if the caller may see it, else raise 404 (never 403: no existence leak)."""
    if obj is None or not can_view(p, obj):
        raise NotFound(f"{resource_type} '{ident}' not found")
    return obj


def ensure_can_modify(p: Principal, obj: Owned, resource_type: str, action: str) -> None:
    """Raise 403 (audited as denied) if the caller may see but not modify ``obj``."""
    if not can_modify(p, obj):
        raise Forbidden(
            f"you may not {action.split('.')[-1]} this {resource_type}",
            audit=denial(action, resource_type, str(obj.id)),
        )


def ensure_role(p: Principal, action: str, resource_type: str, *roles: Role) -> None:
    """Raise 403 (audited) unless the caller has one of ``roles``."""
    if p.role not in roles:
        raise Forbidden(
            f"role '{p.role}' may not perform {action}",
            audit=denial(action, resource_type),
        )


def ensure_can_create(p: Principal, action: str, resource_type: str) -> None:
    """Operators and admins create resources; viewers may not."""
    ensure_role(p, action, resource_type, "admin", "operator")
