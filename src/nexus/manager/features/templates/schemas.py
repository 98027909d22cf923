"""Template API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nexus.core.paging import Page
from nexus.manager.features.vms.schemas import NAME_PATTERN, VmCreate, check_labels

TEMPLATE_LABEL = "nexus.template"
"""The label every VM made from a template carries (value: the template's name)."""


def vm_create_values(
    spec: dict[str, Any],
    *,
    name: str,
    template_name: str,
    description: str = "",
    start: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``VmCreate`` fields a template ``spec`` (+ instantiation ``overrides``) means."""
    ov = dict(overrides or {})
    labels = {**spec.get("labels", {}), **ov.pop("labels", {}), TEMPLATE_LABEL: template_name}
    values: dict[str, Any] = {
        "name": name,
        "description": description,
        "vcpus": spec.get("vcpus", 1),
        "memory_mib": spec.get("memory_mib", 256),
        "image": spec.get("image", "default"),
        "disk_size_mib": spec.get("disk_size_mib"),
        "labels": labels,
        "start": start,
        **ov,
    }
    # Networks / volumes: only once VmCreate knows them (their features add the fields).
    for key in ("networks", "volumes"):
        if spec.get(key) and key in VmCreate.model_fields:
            values[key] = spec[key]
    return values


def vm_create_errors(exc: ValidationError) -> str:
    """``VmCreate``'s complaints in one line (``field: message; ...``)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
    )


class TemplateSpec(BaseModel):
    """The VM a template makes. ``networks`` / ``volumes`` are passed to ``VmCreate`` when the
    networks / volumes features add those fields to it (stored either way)."""

    model_config = ConfigDict(extra="forbid")
    vcpus: int = Field(default=1, ge=1, le=32)
    memory_mib: int = Field(default=256, ge=128, le=256 * 1024)
    image: str = Field(default="default", min_length=1, max_length=64)
    disk_size_mib: int | None = Field(default=None, ge=64, le=1024 * 1024)
    networks: list[Any] = Field(default_factory=list, max_length=16)
    volumes: list[Any] = Field(default_factory=list, max_length=16)
    labels: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("labels")(check_labels)

    @model_validator(mode="after")
    def _as_vm_create(self) -> TemplateSpec:
        """A template must make a valid VM: check the spec with ``VmCreate``'s own rules
        (networks are names, at most as many as a VM may join, room for the
        ``nexus.template`` label...), so ``instantiate`` does not fail later."""
        values = vm_create_values(self.model_dump(), name="x", template_name="x" * 63)
        try:
            VmCreate.model_validate(values)
        except ValidationError as exc:
            raise ValueError(f"not a valid VM spec: {vm_create_errors(exc)}") from exc
        return self


class TemplateCreate(BaseModel):
    """``POST /v1/templates``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=1000)
    public: bool = Field(default=False, description="visible to every user (admins only)")
    spec: TemplateSpec


class TemplateUpdate(BaseModel):
    """``PATCH /v1/templates/{id}`` (owner or admin)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=1000)
    public: bool | None = None
    spec: TemplateSpec | None = None


class TemplateRead(BaseModel):
    """A template as the API shows it."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    public: bool
    spec: dict[str, Any]
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class TemplatePage(Page[TemplateRead]):
    """A page of templates."""


class InstantiateOverrides(BaseModel):
    """What an instantiation may change from the template's spec."""

    model_config = ConfigDict(extra="forbid")
    vcpus: int | None = Field(default=None, ge=1, le=32)
    memory_mib: int | None = Field(default=None, ge=128, le=256 * 1024)
    image: str | None = Field(default=None, min_length=1, max_length=64)
    disk_size_mib: int | None = Field(default=None, ge=64, le=1024 * 1024)
    labels: dict[str, str] | None = None

    _labels = field_validator("labels")(check_labels)


class TemplateInstantiate(BaseModel):
    """``POST /v1/templates/{id}/instantiate``: a VM from the template."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=1000)
    start: bool = True
    overrides: InstantiateOverrides | None = None
