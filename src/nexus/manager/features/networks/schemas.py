"""Network API schemas."""

from __future__ import annotations

import ipaddress
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nexus.core.paging import Page

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


def _check_cidr(v: str | None) -> str | None:
    if v is None:
        return None
    try:
        net = ipaddress.ip_network(v, strict=True)
    except ValueError as exc:
        raise ValueError(f"not a network address in CIDR form: {exc}") from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError("only IPv4 networks are supported")
    if not 16 <= net.prefixlen <= 29:
        raise ValueError("prefix length must be between /16 and /29")
    if not net.is_private or net.is_loopback or net.is_link_local:
        raise ValueError("use a private range (RFC 1918 or 100.64.0.0/10)")
    return str(net)


class NetworkCreate(BaseModel):
    """A new network. The bridge takes the first host address (the guests' gateway)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="DNS label: a-z, 0-9, '-'")
    description: str = Field(default="", max_length=1000)
    cidr: str | None = Field(
        default=None,
        description="private IPv4 network, /16 to /29, e.g. 10.50.0.0/24; omit to get a free "
        "one from the admin's network_pool",
    )
    nat: bool = Field(default=True, description="masquerade guest traffic leaving the host")
    isolated: bool = Field(
        default=False, description="guests reach only their own network and the host"
    )

    _cidr = field_validator("cidr")(_check_cidr)


class NetworkUpdate(BaseModel):
    """Editable fields (the CIDR is fixed); nat/isolated are re-applied on every host."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=1000)
    nat: bool | None = None
    isolated: bool | None = None


class NetworkRead(BaseModel):
    """A network as the API shows it."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    cidr: str
    gateway: str
    nat: bool
    isolated: bool
    shared: bool
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class VmNicRead(BaseModel):
    """One NIC of a VM (in GET /v1/vms/{id})."""

    model_config = ConfigDict(from_attributes=True)
    network_id: str
    nic_index: int
    mac: str
    ip: str


class NetworkPage(Page[NetworkRead]):
    """A page of networks."""
