"""Templates: owned VM specs, optionally ``public`` (visible to everyone, editable by the owner
or an admin). Instantiating one goes through ``vms.service.create_vm`` (placement, RBAC,
audit, operation) like any VM create."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import flush_unique
from nexus.core.errors import Forbidden, NotFound, ValidationFailed
from nexus.core.ids import new_id
from nexus.manager.features.audit import service as audit
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.templates.models import Template
from nexus.manager.features.templates.schemas import (
    TemplateCreate,
    TemplateInstantiate,
    TemplateUpdate,
    vm_create_errors,
    vm_create_values,
)
from nexus.manager.features.vms import service as vms
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.vms.schemas import VmCreate
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import (
    Principal,
    denial,
    ensure_can_create,
    ensure_can_modify,
    ensure_role,
    ensure_visible,
)


def view(t: Template) -> dict[str, Any]:
    """Audit view of a template."""
    return {"name": t.name, "description": t.description, "public": t.public, "spec": t.spec}


async def get_template(
    *, db_session: AsyncSession, principal: Principal, template_id: str
) -> Template:
    """A template the caller may see, by id or name (own first, then public)."""
    t = await db_session.get(Template, template_id)
    if t is not None:
        return ensure_visible(principal, t, "template", template_id)
    q = select(Template).where(Template.name == template_id)
    if not principal.is_admin:
        q = q.where(
            or_(Template.created_by_user_id == principal.user_id, Template.public.is_(True))
        )
    q = q.order_by((Template.created_by_user_id == principal.user_id).desc()).limit(1)
    found = (await db_session.execute(q)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"template '{template_id}' not found")
    return found


async def list_templates(
    *, db_session: AsyncSession, principal: Principal, limit: int = 50, offset: int = 0
) -> tuple[list[Template], int]:
    """Own and public templates (admin: all), newest first."""
    q = select(Template)
    if not principal.is_admin:
        q = q.where(
            or_(Template.created_by_user_id == principal.user_id, Template.public.is_(True))
        )
    total = (await db_session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = await db_session.execute(q.order_by(Template.id.desc()).limit(limit).offset(offset))
    return list(rows.scalars()), int(total)


async def create_template(
    *, db_session: AsyncSession, principal: Principal, body: TemplateCreate
) -> Template:
    """Operators and admins create templates."""
    ensure_can_create(principal, "template.create", "template")
    if body.public:
        _ensure_may_publish(principal, "template.create", None)
    t = Template(
        id=new_id("tpl"),
        name=body.name,
        description=body.description,
        public=body.public,
        spec=body.spec.model_dump(mode="json"),
        created_by_user_id=principal.user_id,
    )
    db_session.add(t)
    await flush_unique(db_session, f"you already have a template named '{body.name}'")
    audit.record(
        db_session,
        actor=principal,
        action="template.create",
        resource_type="template",
        resource_id=t.id,
        after=view(t),
    )
    return t


async def update_template(
    *, db_session: AsyncSession, principal: Principal, template_id: str, body: TemplateUpdate
) -> Template:
    """Owner or admin."""
    t = await get_template(db_session=db_session, principal=principal, template_id=template_id)
    ensure_can_modify(principal, t, "template", "template.update")
    if body.public and not t.public:
        _ensure_may_publish(principal, "template.update", t.id)
    before = view(t)
    changes = body.model_dump(exclude_unset=True, exclude_none=True, mode="json")
    for k, v in changes.items():
        setattr(t, k, v)
    await flush_unique(db_session, f"you already have a template named '{body.name}'")
    audit.record(
        db_session,
        actor=principal,
        action="template.update",
        resource_type="template",
        resource_id=t.id,
        before=before,
        after=view(t),
    )
    return t


async def delete_template(
    *, db_session: AsyncSession, principal: Principal, template_id: str
) -> None:
    """Owner or admin. VMs made from the template are not affected."""
    t = await get_template(db_session=db_session, principal=principal, template_id=template_id)
    ensure_can_modify(principal, t, "template", "template.delete")
    audit.record(
        db_session,
        actor=principal,
        action="template.delete",
        resource_type="template",
        resource_id=t.id,
        before=view(t),
    )
    await db_session.delete(t)


def vm_create_from(t: Template, body: TemplateInstantiate) -> VmCreate:
    """The ``VmCreate`` a template instantiation means (template spec + overrides); a spec
    stored before templates were checked, or overrides that break it (too many labels),
    are a 422 naming the template, never a 500."""
    ov = body.overrides.model_dump(exclude_none=True) if body.overrides else {}
    values = vm_create_values(
        dict(t.spec),
        name=body.name,
        template_name=t.name,
        description=body.description or t.description,
        start=body.start,
        overrides=ov,
    )
    try:
        return VmCreate.model_validate(values)
    except ValidationError as exc:
        raise ValidationFailed(
            f"template '{t.name}' with these overrides is not a valid VM: {vm_create_errors(exc)}"
        ) from exc


def _ensure_may_publish(principal: Principal, action: str, template_id: str | None) -> None:
    """Only an admin makes a template public (visible to every user), as with images."""
    if not principal.is_admin:
        raise Forbidden(
            "only an admin may publish a template (public: true); omit public for a "
            "private one, or ask an admin to publish it",
            audit=denial(action, "template", template_id),
        )


async def instantiate(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    template_id: str,
    body: TemplateInstantiate,
) -> tuple[Vm, Operation]:
    """A VM from a template the caller may see (viewers may not create VMs)."""
    t = await get_template(db_session=db_session, principal=principal, template_id=template_id)
    ensure_role(principal, "template.instantiate", "template", "admin", "operator")
    create = vm_create_from(t, body)
    audit.record(
        db_session,
        actor=principal,
        action="template.instantiate",
        resource_type="template",
        resource_id=t.id,
        after={"vm_name": body.name, "overrides": create.model_dump(exclude={"labels"})},
    )
    return await vms.create_vm(db_session=db_session, state=state, principal=principal, body=create)
