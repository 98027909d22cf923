"""VM API schemas."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nexus.core.paging import Page
from nexus.manager.features.networks.schemas import VmNicRead
from nexus.manager.features.vms.states import VmStateName

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
#: An image id (``img_...``) or name: never a control character (PostgreSQL refuses NUL).
IMAGE_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def check_labels(v: dict[str, str] | None) -> dict[str, str] | None:
    """The labels of a resource: at most 64, keys and values of the allowed shapes."""
    if v is None:
        return v
    if len(v) > 64:
        raise ValueError("at most 64 labels")
    for k, val in v.items():
        if not (1 <= len(k) <= 63) or len(val) > 255:
            raise ValueError(f"label '{k[:70]}': keys 1-63 chars, values up to 255")
    return v


MAX_SSH_KEYS = 20
MAX_SSH_KEY_BYTES = 8 * 1024
MAX_USER_DATA_BYTES = 64 * 1024
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
_SSH_KEY_RE = re.compile(r"^(\S+) ([A-Za-z0-9+/]+={0,2})(?: [^\r\n]*)?$")


def check_ssh_keys(keys: list[str]) -> list[str]:
    """Single-line OpenSSH public keys of a known type, with valid base64 that names the
    same type; surrounding blanks are dropped."""
    out: list[str] = []
    for i, raw in enumerate(keys):
        key = raw.strip()
        label = f"ssh_keys[{i}]"
        if len(key.encode()) > MAX_SSH_KEY_BYTES:
            raise ValueError(f"{label}: longer than {MAX_SSH_KEY_BYTES} bytes")
        m = _SSH_KEY_RE.match(key)
        if m is None or any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise ValueError(
                f"{label}: not a single-line OpenSSH public key ('<type> <base64> [comment]')"
            )
        kind, blob = m.group(1), m.group(2)
        if kind not in SSH_KEY_TYPES:
            raise ValueError(
                f"{label}: unknown key type '{kind[:40]}' (one of {', '.join(SSH_KEY_TYPES)})"
            )
        try:
            data = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"{label}: the key is not valid base64") from exc
        # the blob starts with its own type as an SSH string: uint32 length + name
        n = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
        if data[4 : 4 + n].decode("ascii", "replace") != kind:
            raise ValueError(f"{label}: the key data is not a '{kind}' key")
        out.append(key)
    return out


class VmCreate(BaseModel):
    """A new VM. ``image`` is an image id or name (``default`` after ``make up``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="DNS label: a-z, 0-9, '-'")
    description: str = Field(default="", max_length=1000)
    vcpus: int = Field(default=1, ge=1, le=32)
    memory_mib: int = Field(default=256, ge=128, le=256 * 1024)
    image: str = Field(
        default="default",
        min_length=1,
        max_length=64,
        pattern=IMAGE_REF_PATTERN,
        description="image id or name",
    )
    disk_size_mib: int | None = Field(
        default=None, ge=64, le=1024 * 1024, description="grow the root disk to this size"
    )
    labels: dict[str, str] = Field(default_factory=dict)
    start: bool = True
    networks: list[str] = Field(
        default_factory=lambda: ["default"],
        max_length=8,
        description="networks (ids or names) to join, one NIC each, in order (eth0, eth1...)",
    )
    from_snapshot: str | None = Field(
        default=None, max_length=64, description="snapshot id: a new VM restored from it"
    )
    ttl_s: int | None = Field(
        default=None, ge=60, description="delete the VM this many seconds after creation"
    )
    expires_at: datetime | None = Field(
        default=None, description="delete the VM at this time (instead of ttl_s)"
    )
    ssh_keys: list[str] = Field(
        default_factory=list,
        max_length=MAX_SSH_KEYS,
        description="OpenSSH public keys added to root's authorized_keys at first boot",
    )
    user_data: str | None = Field(
        default=None,
        description=(
            "written to /var/lib/nexus/user-data at first boot (at most 64 KiB); "
            "run once as root when it starts with '#!'. Never shown in reads"
        ),
    )

    _labels = field_validator("labels")(check_labels)
    _ssh_keys = field_validator("ssh_keys")(check_ssh_keys)

    @field_validator("user_data")
    @classmethod
    def _check_user_data(cls, v: str | None) -> str | None:
        if v is not None and len(v.encode()) > MAX_USER_DATA_BYTES:
            raise ValueError(f"user_data is longer than {MAX_USER_DATA_BYTES} bytes")
        if v is not None and "\x00" in v:
            raise ValueError("user_data must not contain NUL characters")
        return v


class VmUpdate(BaseModel):
    """Editable fields; ``vcpus``/``memory_mib`` only while the VM is stopped."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=1000)
    labels: dict[str, str] | None = None
    vcpus: int | None = Field(default=None, ge=1, le=32)
    memory_mib: int | None = Field(default=None, ge=128, le=256 * 1024)

    _labels = field_validator("labels")(check_labels)


class FirstBootRead(BaseModel):
    """What reads show of a VM's first-boot data: never the user data itself."""

    ssh_keys: int = Field(description="how many SSH keys were asked for")
    user_data: bool = Field(description="whether user data was given")
    done_at: datetime | None = Field(default=None, description="when it was applied")
    error: str | None = Field(default=None, description="why applying it failed, if it did")


class VmRead(BaseModel):
    """A VM as the API shows it."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    labels: dict[str, Any]
    vcpus: int
    memory_mib: int
    disk_size_mib: int | None
    image_id: str
    host_id: str | None
    state: VmStateName
    desired_state: str
    state_reason: str | None
    pid: int | None
    ready_at: datetime | None
    started_at: datetime | None
    cloned_from_id: str | None
    expires_at: datetime | None = Field(
        default=None, description="when the VM is deleted (TTL); null: never"
    )
    ttl_warned_at: datetime | None = Field(
        default=None, description="when its owner was warned of the coming expiry"
    )
    group_id: str | None = Field(default=None, description="the instance group it belongs to")
    first_boot: FirstBootRead | None = Field(
        default=None, description="SSH keys and user data applied at first boot, if any"
    )
    nics: list[VmNicRead] = Field(default_factory=list)
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class VmPage(Page[VmRead]):
    """A page of VMs."""
