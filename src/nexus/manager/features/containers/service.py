"""Container images and containers: each container is a microVM of the base image with the
container image's file system attached read-only; the guest agent's container runtime
(:mod:`nexus.guest.container`) mounts it under an overlay and runs the entrypoint.

* Images: an uploaded OCI/docker archive or a ``skopeo`` pull is unpacked by
  :mod:`nexus.images.oci` into ``<state_dir>/container-images/<digest>/rootfs.ext4``, once
  per manifest digest (rows of the same digest share the files). Registry credentials are
  sealed in the row and never returned.
* Containers drive their VM only through the VM engine's public modules (``vms.service``,
  ``vms.spec``); the container's image disk reaches the VM's spec through a
  :data:`~nexus.manager.features.vms.spec.HOOKS` entry keyed by the VM's labels.
* The loop (:func:`reconcile_once`, leased) starts entrypoints once their VM runs, copies
  new log lines to the host (``<state_dir>/containers/<id>/log.jsonl``, size-capped, kept
  across guest restarts), records exits and applies the restart policy with exponential
  backoff (1 s, 2 s, 4 s ... at most 60 s).

The guest is hostile: everything read from it (state lines, log lines) is parsed strictly,
bounded and never trusted beyond "what the container said".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.websockets import WebSocket

from nexus.core.db import flush_unique
from nexus.core.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Problem,
)
from nexus.core.files import sha256_file
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.timeutil import utcnow
from nexus.hostapi.agent_client import AgentError
from nexus.hostapi.models import AgentExecRequest, AgentExecResult, ImageRef, VmSpec
from nexus.hostapi.problems import agent_problem
from nexus.images import oci
from nexus.manager.features.audit import service as audit
from nexus.manager.features.auth.service import principal_for
from nexus.manager.features.containers.models import Container, ContainerImage
from nexus.manager.features.containers.schemas import (
    ContainerCreate,
    ContainerExec,
    ContainerExecResult,
    ContainerImagePull,
    ContainerShellTicket,
    ContainerUpdate,
    LogLine,
    PortMapping,
)
from nexus.manager.features.guest import service as guest
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.images import upload as uploads
from nexus.manager.features.operations import service as operations
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.portforwards import service as portforwards
from nexus.manager.features.portforwards.schemas import PortForwardCreate
from nexus.manager.features.system.service import run_leased
from nexus.manager.features.ttl import service as ttl
from nexus.manager.features.users.models import User
from nexus.manager.features.vms import service as vms
from nexus.manager.features.vms import spec as vm_spec
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.vms.schemas import VmCreate
from nexus.manager.features.volumes import service as volumes
from nexus.manager.features.volumes.models import Volume
from nexus.manager.platform import metrics
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.outbox import emit, new_event
from nexus.manager.platform.rbac import (
    Principal,
    denial,
    ensure_can_create,
    ensure_can_modify,
    ensure_visible,
)

log = get_logger(__name__)

LABEL = "nexus.container"
IMAGE_LABEL = "nexus.container-image"
#: The guest runtime's commands: ``-c`` rather than ``-m`` (runpy's imports cost a few
#: hundred ms in a TCG guest); the same line as ``nexus.guest.container.RUN_MAIN``.
RUN_MAIN = "import sys; from nexus.guest.container import main; sys.exit(main(sys.argv[1:]))"
GUEST_PY = ["python3", "-S", "-c", RUN_MAIN]
#: The runtime's fast start (one Python start on the way to the entrypoint; images built
#: before it have only ``GUEST_PY start``, used when the script is missing).
GUEST_START = ["/usr/local/bin/busybox", "sh", "/opt/nexus/lib/nexus/guest/container-start.sh"]
GUEST_ENV = {"PYTHONPATH": "/opt/nexus/lib"}
LOG_CAP_BYTES = 8 << 20
POLL_BYTES = 1 << 20
MAX_LINE = 16 * 1024
BACKOFF_MAX_S = 60.0
INTERVAL_S = 2.0
STOP_GRACE_S = 10.0
LEASE = "containers"

CONTAINER_STARTS = Counter(
    "nexus_container_starts",
    "Container entrypoint starts, by why (create, start, restart, restart-policy, vm-restart)",
    ["reason"],
    registry=metrics.REGISTRY,
)
CONTAINER_EXITS = Counter(
    "nexus_container_exits",
    "Container entrypoint exits seen by the reconciler, by outcome (ok, error, vm-failed)",
    ["outcome"],
    registry=metrics.REGISTRY,
)
CONTAINER_START_DURATION = Histogram(
    "nexus_container_start_duration_seconds",
    "From asking the guest to start the entrypoint until it runs",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=metrics.REGISTRY,
)
IMAGE_UNPACK_DURATION = Histogram(
    "nexus_container_image_unpack_duration_seconds",
    "Unpacking an OCI image into its ext4 file system (cache misses only)",
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
    registry=metrics.REGISTRY,
)


def _image_snapshot(img: ContainerImage) -> dict[str, Any]:
    return {"name": img.name, "source": img.source, "reference": img.reference,
            "digest": img.digest}  # fmt: skip


def _snapshot(c: Container) -> dict[str, Any]:
    return {"name": c.name, "image_id": c.image_id, "vm_id": c.vm_id, "state": c.state,
            "desired_state": c.desired_state, "restart_policy": c.restart_policy}  # fmt: skip


# --- images ------------------------------------------------------------------------------


def images_dir(state: ManagerState) -> Path:
    """Where unpacked container images live."""
    d = Path(state.settings.state_dir) / "container-images"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _ingest(root: Path, archive: Path) -> dict[str, Any]:
    """Unpack ``archive`` into ``root/<digest hex>/`` unless that digest is cached already."""
    img = oci.read_archive(archive)
    final = root / img.digest.removeprefix("sha256:")
    if not (final / "meta.json").exists():
        began = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
        try:
            _img, rootfs = oci.unpack(archive, work)
            meta = {
                "digest": img.digest,
                "rootfs_sha256": sha256_file(rootfs),
                "size_bytes": rootfs.stat().st_size,
                "config": img.config.as_dict(),
            }
            (work / "meta.json").write_text(json.dumps(meta))
            os.chmod(work, 0o755)
            if final.exists():  # a concurrent ingest of the same digest won
                shutil.rmtree(work)
            else:
                os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        IMAGE_UNPACK_DURATION.observe(time.perf_counter() - began)
    meta = json.loads((final / "meta.json").read_text())
    meta["path"] = str(final)
    return dict(meta)


async def _store_image(
    state: ManagerState, principal: Principal, archive: Path, *, name: str, source: str,
    pull: ContainerImagePull | None = None,
) -> str:  # fmt: skip
    """Unpack (or find cached) and record a row; returns the image id."""
    try:
        meta = await asyncio.to_thread(_ingest, images_dir(state), archive)
    except oci.LayerError as exc:
        raise BadRequest(f"the image was refused: {exc}") from exc
    async with state.db.session() as s:
        row = ContainerImage(
            id=new_id("cimg"),
            name=name,
            source=source,
            reference=pull.reference if pull else None,
            digest=meta["digest"],
            rootfs_sha256=meta["rootfs_sha256"],
            size_bytes=int(meta["size_bytes"]),
            config=meta["config"],
            path=meta["path"],
            registry_username=pull.username if pull else None,
            registry_password=pull.password if pull else None,
            tls_verify=pull.tls_verify if pull else True,
            created_by_user_id=principal.user_id,
        )
        s.add(row)
        await flush_unique(s, f"you already have a container image named '{name}'")
        audit.record(s, actor=principal, action=f"container_image.{source}",
                     resource_type="container_image", resource_id=row.id,
                     after=_image_snapshot(row))  # fmt: skip
        return row.id


async def pull_image(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, body: ContainerImagePull
) -> Operation:
    """Pull ``body.reference`` with skopeo and unpack it, as an operation."""
    ensure_can_create(principal, "container_image.pull", "container_image")
    name = body.name or body.reference.removeprefix("docker://")
    exists = await db_session.execute(
        select(ContainerImage.id).where(
            ContainerImage.created_by_user_id == principal.user_id, ContainerImage.name == name
        )
    )
    if exists.first() is not None:
        raise Conflict(f"you already have a container image named '{name}'")
    op = operations.create(db_session, principal=principal, kind="container_image.pull",
                           resource_type="container_image")  # fmt: skip
    await db_session.commit()

    async def work(progress: operations.Progress) -> dict[str, Any]:
        await progress(10, f"pulling {body.reference}")
        with tempfile.TemporaryDirectory(dir=images_dir(state)) as tmp:
            archive = Path(tmp) / "image.tar"
            try:
                await asyncio.to_thread(
                    oci.pull, body.reference, archive, username=body.username,
                    password=body.password, tls_verify=body.tls_verify,
                )  # fmt: skip
            except oci.LayerError as exc:
                raise BadRequest(str(exc)) from exc
            await progress(60, "unpacking layers")
            image_id = await _store_image(state, principal, archive, name=name, source="pull",
                                          pull=body)  # fmt: skip
        return {"image_id": image_id}

    operations.start(state, op.id, work, kind="container_image.pull")
    return op


async def import_image(
    *, state: ManagerState, principal: Principal, name: str, archive: Path
) -> ContainerImage:
    """Record an uploaded archive (already on disk, authorized before the upload)."""
    image_id = await _store_image(state, principal, archive, name=name, source="import")
    async with state.db.session() as s:
        row = await s.get(ContainerImage, image_id)
        if row is None:
            raise NotFound(f"container image '{image_id}' vanished")
        return row


async def get_image(*, db_session: AsyncSession, principal: Principal, ref: str) -> ContainerImage:
    """A container image by id or name that the caller may see."""
    row = await db_session.get(ContainerImage, ref)
    if row is None:
        q = select(ContainerImage).where(ContainerImage.name == ref)
        if not principal.is_admin:
            q = q.where(ContainerImage.created_by_user_id == principal.user_id)
        row = (await db_session.execute(q.order_by(ContainerImage.created_at.desc()))).scalar()
    return ensure_visible(principal, row, "container image", ref)


async def list_images(
    *, db_session: AsyncSession, principal: Principal, limit: int, offset: int
) -> tuple[list[ContainerImage], int]:
    """Container images the caller may see, newest first."""
    conds = [] if principal.is_admin else [ContainerImage.created_by_user_id == principal.user_id]
    total = (
        await db_session.execute(select(func.count(ContainerImage.id)).where(*conds))
    ).scalar_one()
    q = select(ContainerImage).where(*conds).order_by(ContainerImage.id.desc())
    rows = (await db_session.execute(q.limit(limit).offset(offset))).scalars()
    return list(rows), int(total)


async def delete_image(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, ref: str
) -> None:
    """Delete a container image no container uses; its files go with the last row."""
    row = await get_image(db_session=db_session, principal=principal, ref=ref)
    ensure_can_modify(principal, row, "container image", "container_image.delete")
    used = await db_session.execute(select(Container.id).where(Container.image_id == row.id))
    if used.first() is not None:
        raise Conflict(f"container image '{row.name}' is used by a container")
    audit.record(db_session, actor=principal, action="container_image.delete",
                 resource_type="container_image", resource_id=row.id,
                 before=_image_snapshot(row))  # fmt: skip
    await db_session.delete(row)
    await db_session.flush()
    others = await db_session.execute(
        select(ContainerImage.id).where(ContainerImage.digest == row.digest)
    )
    if others.first() is None:
        path = Path(row.path)
        if path.parent == images_dir(state):
            shutil.rmtree(path, ignore_errors=True)


def image_ref(img: ContainerImage) -> ImageRef:
    """The agent's reference to an image's read-only disk (its ``rootfs.ext4``)."""
    return ImageRef(id=f"cimg-{img.rootfs_sha256[:24]}", kernel_sha256="",
                    rootfs_sha256=img.rootfs_sha256, source_dir=img.path)  # fmt: skip


async def _spec_hook(s: AsyncSession, spec: VmSpec) -> VmSpec:
    """Attach the container image of a container's VM (``vms.spec.HOOKS``). Labels are
    tenant input (anyone may label a VM ``nexus.container=...``): the disk comes from the
    container row, which must name this VM (or none yet: the row commits with its VM, just
    before the id is filled in) and belong to the VM's owner."""
    vm = await s.get(Vm, spec.id)
    if vm is None or LABEL not in (vm.labels or {}):
        return spec
    ctr = await s.get(Container, (vm.labels or {}).get(LABEL, ""))
    if (
        ctr is None
        or ctr.created_by_user_id != vm.created_by_user_id
        or ctr.vm_id not in (None, vm.id)
    ):
        return spec
    img = await s.get(ContainerImage, ctr.image_id)
    if img is None:
        return spec
    return spec.model_copy(update={"image_disks": [image_ref(img)]})


vm_spec.HOOKS.append(_spec_hook)


# --- containers --------------------------------------------------------------------------


def parse_restart(policy: str) -> tuple[str, int | None]:
    """``on-failure:5`` -> ("on-failure", 5)."""
    name, _, limit = policy.partition(":")
    return name, int(limit) if limit else None


def effective_spec(body: ContainerCreate, config: dict[str, Any]) -> dict[str, Any]:
    """What the container runs: the request over the image's config (docker semantics:
    ``command`` replaces the entrypoint and drops the image's cmd; ``args`` replace cmd)."""
    entrypoint = body.command if body.command is not None else list(config.get("entrypoint", []))
    if body.args is not None:
        args = body.args
    else:
        args = [] if body.command is not None else list(config.get("cmd", []))
    env: dict[str, str] = {}
    for item in config.get("env", []):
        k, sep, v = str(item).partition("=")
        if sep:
            env[k] = v
    env.update(body.env)
    argv = [*entrypoint, *args]
    if not argv:
        raise BadRequest("the image has no entrypoint or cmd: give `command`")
    return {
        "argv": argv,
        "env": env,
        "workdir": body.workdir or config.get("workdir") or "/",
        "user": body.user if body.user is not None else (config.get("user") or ""),
        "ports": [p.model_dump() for p in body.ports],
    }


async def create_container(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, body: ContainerCreate
) -> Container:
    """A container row and its microVM (created and booted by a VM operation); the loop
    starts the entrypoint once the VM runs."""
    ensure_can_create(principal, "container.create", "container")
    img = await get_image(db_session=db_session, principal=principal, ref=body.image)
    run = effective_spec(body, img.config)
    policy, max_restarts = parse_restart(body.restart_policy)
    ctr_id = new_id("ctr")
    taken = await db_session.execute(
        select(Container.id).where(
            Container.created_by_user_id == principal.user_id, Container.name == body.name
        )
    )
    if taken.first() is not None:
        raise Conflict(f"you already have a container named '{body.name}'")
    vols = await _check_volumes(db_session, principal, body)
    run["volumes"] = [
        {"volume_id": vol.id, "mount_path": v.mount_path, "read_only": v.read_only}
        for v, vol in zip(body.volumes, vols, strict=True)
    ]
    # The row first: it commits with the VM (the VM operation commits the session), so the
    # spec hook finds it when the VM is provisioned; vm_id is filled in right after.
    ctr = Container(
        id=ctr_id, name=body.name, image_id=img.id, vm_id=None, spec=run,
        restart_policy=policy, max_restarts=max_restarts, desired_state="running",
        state="creating", created_by_user_id=principal.user_id,
    )  # fmt: skip
    db_session.add(ctr)
    await flush_unique(db_session, f"you already have a container named '{body.name}'")

    async def prepare(s: AsyncSession, vm: Vm) -> None:
        """Volumes and ports, in the VM's transaction: a refusal undoes the VM and the row."""
        for v, vol in zip(body.volumes, vols, strict=True):
            await volumes.attach_to_new_vm(db_session=s, state=state, principal=principal,
                                           vm=vm, volume=vol, read_only=v.read_only)  # fmt: skip
        published: list[tuple[int, str]] = []
        try:
            for port in body.ports:
                published.append(await _publish(s, state, principal, vm, port))
        except BaseException:
            await _unpublish(s, state, vm, published)
            raise

    vm, _op = await vms.create_vm(
        db_session=db_session, state=state, principal=principal,
        body=VmCreate(
            name=f"ctr-{body.name}"[:63], image=body.base_image, vcpus=body.vcpus,
            memory_mib=body.memory_mib, labels={LABEL: ctr_id, IMAGE_LABEL: img.id},
            networks=[body.network or "default"], ttl_s=body.ttl_s,
            description=f"container {body.name}",
        ),
        prepare=prepare,
    )  # fmt: skip
    ctr.vm_id = vm.id
    audit.record(db_session, actor=principal, action="container.create",
                 resource_type="container", resource_id=ctr.id, after=_snapshot(ctr))  # fmt: skip
    state.spawn(_start_when_booted(state, ctr.id), name=f"container-start-{ctr.id}")
    return ctr


async def _check_volumes(
    s: AsyncSession, principal: Principal, body: ContainerCreate
) -> list[Volume]:
    """The request's volumes, each one the caller may attach (404 unseen, 403 not theirs,
    409 attached elsewhere) and with a file system to mount (400 for ``raw``)."""
    out: list[Volume] = []
    for v in body.volumes:
        vol = await volumes.check_attachable(
            db_session=s, principal=principal, volume_id=v.volume, action="container.create"
        )
        if vol.filesystem != "ext4":
            raise BadRequest(f"volume '{vol.name}' is {vol.filesystem}: only ext4 volumes mount")
        if vol.id in {o.id for o in out}:
            raise BadRequest(f"volume '{vol.name}' is named twice")
        out.append(vol)
    return out


async def _start_when_booted(state: ManagerState, ctr_id: str) -> None:
    """Start the entrypoint as soon as the new VM runs (the loop would, a second later)."""
    deadline = time.monotonic() + state.settings.boot_timeout_s + 30
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        async with state.db.session() as s:
            ctr = await s.get(Container, ctr_id)
            vm = await s.get(Vm, ctr.vm_id) if ctr and ctr.vm_id else None
            if ctr is None or ctr.state != "creating" or vm is None or vm.state == "failed":
                return
            ready = vm.state == "running"
        if ready:
            try:
                await _reconcile_one(state, ctr_id)
            except Exception:
                log.exception("containers.start_error", container_id=ctr_id)
            return


async def _publish(
    s: AsyncSession, state: ManagerState, principal: Principal, vm: Vm, port: PortMapping
) -> tuple[int, str]:
    """A port mapping through the VM port-forward machinery (its range and host checks)."""
    pf = await portforwards.create_port_forward(
        db_session=s, state=state, principal=principal, vm=vm,
        body=PortForwardCreate(host_port=port.host_port, guest_port=port.container_port,
                               protocol=port.protocol),
    )  # fmt: skip
    return pf.host_port, pf.protocol


async def _unpublish(
    s: AsyncSession, state: ManagerState, vm: Vm, published: list[tuple[int, str]]
) -> None:
    """Take back forwards already added on the host when a later one was refused (their rows
    go with the rolled-back transaction)."""
    host = await s.get(Host, vm.host_id) if vm.host_id else None
    if host is None:
        return
    for host_port, protocol in published:
        with contextlib.suppress(AgentError):
            await hosts.agent_client(state, host).remove_port_forward(vm.id, host_port, protocol)


async def get_container(*, db_session: AsyncSession, principal: Principal, ref: str) -> Container:
    """A container by id or name that the caller may see."""
    row = await db_session.get(Container, ref)
    if row is None:
        q = select(Container).where(Container.name == ref)
        if not principal.is_admin:
            q = q.where(Container.created_by_user_id == principal.user_id)
        row = (await db_session.execute(q.order_by(Container.created_at.desc()))).scalar()
    return ensure_visible(principal, row, "container", ref)


async def list_containers(
    *, db_session: AsyncSession, principal: Principal, state: str | None, limit: int, offset: int
) -> tuple[list[Container], int]:
    """Containers the caller may see, newest first."""
    conds: list[Any] = [] if principal.is_admin else [
        Container.created_by_user_id == principal.user_id
    ]  # fmt: skip
    if state:
        conds.append(Container.state == state)
    total = (await db_session.execute(select(func.count(Container.id)).where(*conds))).scalar_one()
    q = select(Container).where(*conds).order_by(Container.id.desc())
    rows = (await db_session.execute(q.limit(limit).offset(offset))).scalars()
    return list(rows), int(total)


async def update_container(
    *, db_session: AsyncSession, principal: Principal, ref: str, body: ContainerUpdate
) -> Container:
    """Change the restart policy."""
    ctr = await get_container(db_session=db_session, principal=principal, ref=ref)
    ensure_can_modify(principal, ctr, "container", "container.update")
    before = _snapshot(ctr)
    if body.restart_policy is not None:
        ctr.restart_policy, ctr.max_restarts = parse_restart(body.restart_policy)
    audit.record(db_session, actor=principal, action="container.update",
                 resource_type="container", resource_id=ctr.id, before=before,
                 after=_snapshot(ctr))  # fmt: skip
    return ctr


async def delete_container(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, ref: str
) -> Operation | None:
    """Delete the container: its VM (and with it its port forwards) by a VM operation, its
    host-side logs and its row."""
    ctr = await get_container(db_session=db_session, principal=principal, ref=ref)
    ensure_can_modify(principal, ctr, "container", "container.delete")
    audit.record(db_session, actor=principal, action="container.delete",
                 resource_type="container", resource_id=ctr.id, before=_snapshot(ctr))  # fmt: skip
    await release(db_session, state, ctr)
    vm_id = ctr.vm_id
    _BUSY.pop(ctr.id, None)
    await db_session.delete(ctr)
    await db_session.flush()
    shutil.rmtree(_log_dir(state, ctr.id), ignore_errors=True)
    if vm_id is None or await db_session.get(Vm, vm_id) is None:
        return None
    _vm, op = await vms.delete_vm(
        db_session=db_session, state=state, principal=principal, vm_id=vm_id
    )
    return op


async def _expire_hook(s: AsyncSession, state: ManagerState, owner: Principal, vm: Vm) -> bool:
    """``ttl.service.EXPIRE_HOOKS``: when a container's VM expires (a container's ``ttl_s``
    is its VM's), delete the whole container — VM, logs, row — not only the VM. Labels are
    tenant input: the container row must name this VM and have the VM's owner."""
    ctr_id = (vm.labels or {}).get(LABEL)
    ctr = await s.get(Container, ctr_id) if ctr_id else None
    if ctr is None or ctr.vm_id != vm.id or ctr.created_by_user_id != vm.created_by_user_id:
        return False
    after = {"expires_at": str(vm.expires_at), "vm_id": vm.id}
    audit.record(s, actor=None, action="container.ttl.expire", resource_type="container",
                 resource_id=ctr.id, after=after)  # fmt: skip
    emit(s.sync_session, new_event(
        "container.expired", resource_type="container", resource_id=ctr.id,
        resource_name=ctr.name, owner_user_id=ctr.created_by_user_id,
        payload={"vm_id": vm.id, "expires_at": vm.expires_at},
    ))  # fmt: skip
    await delete_container(db_session=s, state=state, principal=owner, ref=ctr.id)
    return True


ttl.EXPIRE_HOOKS.append(_expire_hook)


RELEASE_GRACE_S = 3.0


async def release(s: AsyncSession, state: ManagerState, ctr: Container) -> None:
    """Best effort, before the container's VM is deleted (a forced stop): stop the
    entrypoint and unmount its volumes in the guest, so what it wrote (and a clean journal)
    is on the volume for the next container."""
    if not ctr.spec.get("volumes") or ctr.vm_id is None:
        return
    vm = await s.get(Vm, ctr.vm_id)
    host = await s.get(Host, vm.host_id) if vm is not None and vm.host_id else None
    if vm is None or host is None or vm.state != "running":
        return
    try:
        await _guest(state, host, vm.id, ["release", "--timeout", str(RELEASE_GRACE_S)],
                     timeout_s=RELEASE_GRACE_S + 15)  # fmt: skip
    except AgentError as exc:
        log.warning("containers.release_failed", container_id=ctr.id, error=str(exc)[:300])


# --- talking to the guest ----------------------------------------------------------------


async def _guest(
    state: ManagerState, host: Host, vm_id: str, argv: list[str], *, timeout_s: float = 30,
    env: dict[str, str] | None = None, max_output: int = 64 * 1024,
    prefix: list[str] = GUEST_PY,
) -> AgentExecResult:  # fmt: skip
    req = AgentExecRequest(argv=[*prefix, *argv], env={**(env or {}), **GUEST_ENV},
                           timeout_s=timeout_s, max_output=max_output)  # fmt: skip
    return await hosts.agent_client(state, host).exec_vm(vm_id, req)


def _out(res: AgentExecResult) -> str:
    return base64.b64decode(res.stdout_b64)[:POLL_BYTES].decode("utf-8", "replace")


def _err(res: AgentExecResult) -> str:
    return base64.b64decode(res.stderr_b64)[-2000:].decode("utf-8", "replace").strip()


def parse_state(text: str) -> dict[str, str]:
    """The guest's ``state=... code=...`` line (untrusted: known keys, short values)."""
    out: dict[str, str] = {}
    for item in text.strip().splitlines()[-1:][0].split() if text.strip() else []:
        k, _, v = item.partition("=")
        if k in ("state", "code", "pid", "started", "finished", "seq") and len(v) < 32:
            out[k] = v
    return out


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v else None
    except ValueError:
        return None


async def _where(s: AsyncSession, ctr: Container) -> tuple[Vm, Host]:
    vm = await s.get(Vm, ctr.vm_id) if ctr.vm_id else None
    if vm is None or vm.host_id is None:
        raise Conflict(f"container '{ctr.name}' has no VM")
    host = await s.get(Host, vm.host_id)
    if host is None:
        raise Conflict(f"container '{ctr.name}''s host vanished")
    return vm, host


async def guest_disks(s: AsyncSession, ctr: Container, vm: Vm) -> tuple[str, list[str]]:
    """The guest device of the container image's disk and the ``--volume DEV:ro|rw:PATH``
    values of the container's volumes, from the VM's attachments now (the agent attaches
    volumes in attachment order, then the image disk)."""
    atts = await volumes.list_vm_volumes(s, vm.id)
    index = {a.volume_id: (i, a.read_only) for i, a in enumerate(atts)}
    out: list[str] = []
    for v in ctr.spec.get("volumes") or []:
        hit = index.get(str(v.get("volume_id")))
        if hit is None:
            raise Conflict(f"container '{ctr.name}': volume {v.get('volume_id')} is not "
                           "attached to its VM any more")  # fmt: skip
        ro = hit[1] or bool(v.get("read_only"))
        out.append(f"{volumes.device_of(hit[0])}:{'ro' if ro else 'rw'}:{v.get('mount_path')}")
    return volumes.device_of(len(atts)), out


async def _guest_start(
    s: AsyncSession, state: ManagerState, ctr: Container, vm: Vm, host: Host
) -> dict[str, str]:
    run = ctr.spec
    device, mounts = await guest_disks(s, ctr, vm)
    args = ["start", "--device", device, "--workdir", str(run.get("workdir") or "/")]
    for m in mounts:
        args += ["--volume", m]
    if run.get("user"):
        args += ["--user", str(run["user"])]
    for k, v in dict(run.get("env") or {}).items():
        args += ["--env", f"{k}={v}"]
    args += ["--", *[str(a) for a in run.get("argv", [])]]
    began = time.perf_counter()
    res = await _guest(state, host, vm.id, args[1:], prefix=GUEST_START)
    if res.exit_code != 0 and "container-start.sh" in _err(res):  # an older image
        res = await _guest(state, host, vm.id, args)
    CONTAINER_START_DURATION.observe(time.perf_counter() - began)
    if res.exit_code != 0:
        raise Conflict(f"the entrypoint did not start: {_err(res) or res.exit_code}")
    return parse_state(_out(res))


def _apply_state(ctr: Container, st: dict[str, str]) -> None:
    """Copy a guest state line into the row."""
    if st.get("state") == "running":
        ctr.state, ctr.exit_code, ctr.finished_at = "running", None, None
        ctr.started_at = utcnow()
    elif st.get("state") == "exited":
        ctr.exit_code = _int(st.get("code"))
        ctr.finished_at = utcnow()
        ctr.state = "exited"


async def start_container(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, ref: str,
    action: str = "start",
) -> Container:  # fmt: skip
    """Start (or, with ``action="restart"``, stop then start) the entrypoint."""
    ctr = await get_container(db_session=db_session, principal=principal, ref=ref)
    ensure_can_modify(principal, ctr, "container", f"container.{action}")
    vm, host = await _where(db_session, ctr)
    if vm.state != "running":
        raise Conflict(f"container '{ctr.name}''s VM is {vm.state}; try again once it runs")
    before = _snapshot(ctr)
    try:
        if action == "restart":
            await _guest(state, host, vm.id, ["stop", "--timeout", str(STOP_GRACE_S)],
                         timeout_s=STOP_GRACE_S + 15)  # fmt: skip
        st = await _guest_start(db_session, state, ctr, vm, host)
    except AgentError as exc:
        raise agent_problem(exc, action) from exc
    ctr.desired_state = "running"
    ctr.next_restart_at = None
    _apply_state(ctr, st)
    CONTAINER_STARTS.labels(action).inc()
    audit.record(db_session, actor=principal, action=f"container.{action}",
                 resource_type="container", resource_id=ctr.id, before=before,
                 after=_snapshot(ctr))  # fmt: skip
    return ctr


async def stop_container(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, ref: str,
    timeout_s: float = STOP_GRACE_S,
) -> Container:  # fmt: skip
    """SIGTERM to the entrypoint, SIGKILL after ``timeout_s``; the restart policy no longer
    applies until the next start."""
    ctr = await get_container(db_session=db_session, principal=principal, ref=ref)
    ensure_can_modify(principal, ctr, "container", "container.stop")
    before = _snapshot(ctr)
    ctr.desired_state = "stopped"
    ctr.next_restart_at = None
    vm, host = await _where(db_session, ctr)
    if vm.state == "running":
        try:
            res = await _guest(state, host, vm.id, ["stop", "--timeout", str(timeout_s)],
                               timeout_s=timeout_s + 15)  # fmt: skip
        except AgentError as exc:
            raise agent_problem(exc, "stop") from exc
        st = parse_state(_out(res))
        if st.get("state") == "exited":
            ctr.exit_code = _int(st.get("code"))
            ctr.finished_at = utcnow()
        await _collect_logs(state, ctr, host)
    ctr.state = "stopped"
    audit.record(db_session, actor=principal, action="container.stop",
                 resource_type="container", resource_id=ctr.id, before=before,
                 after=_snapshot(ctr))  # fmt: skip
    return ctr


async def exec_in_container(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, ref: str,
    body: ContainerExec,
) -> ContainerExecResult:  # fmt: skip
    """Run a command in the container's root, namespaces and user (audited with its argv)."""
    ctr = await get_container(db_session=db_session, principal=principal, ref=ref)
    ensure_can_modify(principal, ctr, "container", "container.exec")
    vm, host = await _where(db_session, ctr)
    if vm.state != "running" or ctr.state != "running":
        raise Conflict(f"container '{ctr.name}' is not running")
    audit.record(db_session, actor=principal, action="container.exec",
                 resource_type="container", resource_id=ctr.id,
                 after={"argv": body.command, "env_keys": sorted(body.env)})  # fmt: skip
    await db_session.commit()
    user = body.user if body.user is not None else str(ctr.spec.get("user") or "")
    args = ["exec", "--user", user] if user else ["exec"]
    if body.workdir:
        args += ["--workdir", body.workdir]
    env = {**dict(ctr.spec.get("env") or {}), **body.env}
    try:
        res = await _guest(state, host, vm.id, [*args, "--", *body.command], env=env,
                           timeout_s=body.timeout_s, max_output=4 << 20)  # fmt: skip
    except AgentError as exc:
        raise agent_problem(exc, "exec") from exc
    return ContainerExecResult(
        exit_code=res.exit_code,
        stdout=base64.b64decode(res.stdout_b64).decode("utf-8", "replace"),
        stderr=base64.b64decode(res.stderr_b64).decode("utf-8", "replace"),
        timed_out=res.timed_out,
        truncated=res.truncated,
    )


# --- terminal ----------------------------------------------------------------------------

SHELL_PURPOSE = "container-shell"


def _ensure_interactive(principal: Principal, ctr: Container, action: str) -> None:
    """Shells: owner operator or admin, with a token that may write (like VM shells)."""
    ensure_can_modify(principal, ctr, "container", action)
    if "write" not in principal.scopes:
        raise Forbidden(f"{action} needs a token with the 'write' scope",
                        audit=denial(action, "container", ctr.id))  # fmt: skip


async def create_shell_ticket(
    *, db_session: AsyncSession, principal: Principal, state: ManagerState, ref: str
) -> ContainerShellTicket:
    """A single-use ticket for the container's terminal WebSocket (browsers cannot set
    headers on a WebSocket); the VM shell's tickets, for purpose ``container-shell``."""
    ctr = await get_container(db_session=db_session, principal=principal, ref=ref)
    _ensure_interactive(principal, ctr, "container.shell")
    if ctr.vm_id is None:
        raise Conflict(f"container '{ctr.name}' has no VM")
    secret, expires = await guest.issue_ticket(
        db_session=db_session, state=state, principal=principal, vm_id=ctr.vm_id,
        purpose=SHELL_PURPOSE, action="container.shell.ticket", resource_type="container",
        resource_id=ctr.id,
    )  # fmt: skip
    return ContainerShellTicket(ticket=secret, container_id=ctr.id, expires_at=expires,
                                ws_path=f"/v1/containers/{ctr.id}/shell/ws")  # fmt: skip


MAX_SHELL_COMMAND = 8192


def shell_command(user: str, command: str | None = None) -> str:
    """What the guest agent runs on the PTY: the runtime's ``shell`` as ``user`` (the login
    shell, or ``/bin/sh -c command`` inside the container)."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in GUEST_ENV.items())
    argv = [*GUEST_PY, "shell", *(["--user", user] if user else [])]
    if command is not None:
        argv += ["--", "/bin/sh", "-c", command]
    return f"{env} exec {shlex.join(argv)}"


async def shell_session(state: ManagerState, ws: WebSocket, ref: str) -> None:
    """``/v1/containers/{id}/shell/ws``: authenticate before the upgrade (bearer or ticket),
    authorize like ``exec``, then an interactive shell inside the container's namespaces and
    root as its user, bridged through the VM's agent (audited open and close)."""

    async def ticket_vm() -> str:  # a ticket names the container's VM: by id, no principal
        async with state.db.session() as s:
            row = await s.get(Container, ref)
            return (row.vm_id or "") if row is not None else ""

    principal = await guest.ws_principal(state, ws, ticket_vm, SHELL_PURPOSE)
    async with state.db.session() as s:
        ctr = await get_container(db_session=s, principal=principal, ref=ref)
        _ensure_interactive(principal, ctr, "container.shell")
        vm, host = await _where(s, ctr)
        if vm.state != "running" or ctr.state != "running":
            raise Conflict(f"container '{ctr.name}' is not running")
        user = str(ctr.spec.get("user") or "")
        ctr_id = ctr.id
    command = ws.query_params.get("command") or None
    if command is not None and (len(command) > MAX_SHELL_COMMAND or "\0" in command):
        raise BadRequest(f"command: at most {MAX_SHELL_COMMAND} characters, no NUL")
    await guest.run_shell(state, ws, principal, vm, host, command=shell_command(user, command),
                          resource=("container", ctr_id))  # fmt: skip


# --- logs ------------------------------------------------------------------------------


def _log_dir(state: ManagerState, ctr_id: str) -> Path:
    return Path(state.settings.state_dir) / "containers" / ctr_id


def parse_log_lines(text: str, after: int) -> tuple[list[dict[str, Any]], int]:
    """Guest log lines (``SEQ EPOCH o|e TEXT``) numbered above ``after``; malformed lines are
    dropped, text is capped. Returns the records and the highest sequence number seen."""
    out: list[dict[str, Any]] = []
    top = after
    now = time.time()
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3 or not parts[0].isdigit() or parts[2] not in ("o", "e"):
            continue
        seq = int(parts[0])
        try:
            ts = float(parts[1])
        except ValueError:
            continue
        if seq <= top or seq > top + 10_000_000:
            continue
        if not 0 < ts < now + 86400:
            ts = now
        top = seq
        out.append({"t": round(ts, 6), "s": parts[2], "l": (parts[3] if len(parts) > 3 else "")
                    [:MAX_LINE]})  # fmt: skip
    return out, top


def _append_logs(d: Path, records: list[dict[str, Any]]) -> None:
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / "log.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        os.chmod(path, 0o600)
        for r in records:
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")
    if path.stat().st_size > LOG_CAP_BYTES // 2:
        os.replace(path, d / "log.1.jsonl")  # keep at most two halves of the cap


async def _collect_logs(state: ManagerState, ctr: Container, host: Host) -> None:
    """Copy the lines the guest logged since ``log_cursor`` to the host."""
    if ctr.vm_id is None:
        return
    res = await _guest(state, host, ctr.vm_id, ["logs", "--after", str(ctr.log_cursor),
                                                "--max-bytes", str(POLL_BYTES)],
                       max_output=POLL_BYTES + 4096)  # fmt: skip
    if res.exit_code != 0:
        return
    records, top = parse_log_lines(_out(res), ctr.log_cursor)
    if records:
        await asyncio.to_thread(_append_logs, _log_dir(state, ctr.id), records)
        ctr.log_cursor = top


async def _poll(state: ManagerState, ctr: Container, host: Host) -> dict[str, str]:
    """One guest call: the state line and the log lines since ``log_cursor`` (copied to the
    host). A guest whose numbering restarted (its VM rebooted: /run is a tmpfs) starts the
    cursor over."""
    if ctr.vm_id is None:
        return {}
    args = ["poll", "--after", str(ctr.log_cursor), "--max-bytes", str(POLL_BYTES)]
    res = await _guest(state, host, ctr.vm_id, args, max_output=POLL_BYTES + 4096)
    if res.exit_code != 0:
        return {}
    first, _, rest = _out(res).partition("\n")
    st = parse_state(first)
    seq = _int(st.get("seq"))
    if seq is not None and seq < ctr.log_cursor:
        ctr.log_cursor = 0
        return st
    records, top = parse_log_lines(rest, ctr.log_cursor)
    if records:
        await asyncio.to_thread(_append_logs, _log_dir(state, ctr.id), records)
        ctr.log_cursor = top
    return st


def read_logs(
    state: ManagerState, ctr: Container, *, tail: int | None, since: datetime | None
) -> list[LogLine]:
    """The host's copy of the container's log lines, oldest first."""
    d = _log_dir(state, ctr.id)
    lines: list[LogLine] = []
    for name in ("log.1.jsonl", "log.jsonl"):
        with contextlib.suppress(OSError), open(d / name, encoding="utf-8") as fh:
            for raw in fh:
                try:
                    r = json.loads(raw)
                    at = datetime.fromtimestamp(float(r["t"]), tz=UTC)
                except (ValueError, KeyError, TypeError):
                    continue
                if since is not None and at < since:
                    continue
                out = r.get("s") == "o"
                line = str(r.get("l", ""))
                lines.append(LogLine(time=at, stream="stdout" if out else "stderr", line=line))
    return lines[-tail:] if tail else lines


async def get_logs(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, ref: str,
    tail: int | None, since: datetime | None,
) -> list[LogLine]:  # fmt: skip
    """The container's log lines (fresh from the guest when it runs)."""
    ctr = await get_container(db_session=db_session, principal=principal, ref=ref)
    if ctr.state == "running":
        with contextlib.suppress(AgentError, Conflict):
            _vm, host = await _where(db_session, ctr)
            await _collect_logs(state, ctr, host)
    return read_logs(state, ctr, tail=tail, since=since)


async def follow_logs(
    state: ManagerState, principal: Principal, ctr_id: str, *, tail: int | None,
    since: datetime | None, max_s: float = 3600,
) -> AsyncIterator[bytes]:  # fmt: skip
    """NDJSON log lines: what there is, then new lines until the container stops."""
    seen = 0
    deadline = time.monotonic() + max_s
    first = True
    while time.monotonic() < deadline:
        async with state.db.session() as s:
            try:
                lines = await get_logs(
                    db_session=s,
                    state=state,
                    principal=principal,
                    ref=ctr_id,
                    tail=tail if first else None,
                    since=since,
                )
                ctr = await get_container(db_session=s, principal=principal, ref=ctr_id)
                running = ctr.state in ("running", "creating", "restarting")
            except NotFound:
                return
        if first:
            new, first = lines, False
            total = len(read_logs(state, ctr, tail=None, since=since))
            seen = total
        else:
            new = lines[seen:] if len(lines) >= seen else lines
            seen = len(lines)
        for line in new:
            yield (line.model_dump_json() + "\n").encode()
        if not running:
            return
        await asyncio.sleep(0.5)


# --- the loop ----------------------------------------------------------------------------


def backoff_s(restarts: int) -> float:
    """1, 2, 4, 8 ... seconds, at most :data:`BACKOFF_MAX_S`."""
    return float(min(BACKOFF_MAX_S, 2 ** min(restarts, 16)))


def wants_restart(ctr: Container, *, vm_failed: bool = False) -> bool:
    """Whether the restart policy restarts an exited entrypoint (or a container whose VM
    failed: a failure, whatever the exit code)."""
    if ctr.desired_state != "running" or ctr.restart_policy == "no":
        return False
    if ctr.restart_policy == "on-failure":
        if not ctr.exit_code and not vm_failed:
            return False
        return ctr.max_restarts is None or ctr.restart_count < ctr.max_restarts
    return True  # always


#: One reconcile of a container at a time in this process (the loop and the start that
#: follows a create would otherwise both start the entrypoint).
_BUSY: dict[str, asyncio.Lock] = {}


async def _reconcile_one(state: ManagerState, ctr_id: str) -> None:
    async with _BUSY.setdefault(ctr_id, asyncio.Lock()):
        await _reconcile_locked(state, ctr_id)


async def _reconcile_locked(state: ManagerState, ctr_id: str) -> None:
    async with state.db.session() as s:
        ctr = await s.get(Container, ctr_id)
        if ctr is None or ctr.vm_id is None:
            return
        vm = await s.get(Vm, ctr.vm_id)
        if vm is None:
            ctr.state, ctr.last_error = "failed", "the container's VM is gone"
            return
        now = utcnow()
        if vm.state == "failed":
            await _vm_failed(s, state, ctr, vm, now)
            return
        if vm.state != "running" or vm.host_id is None:
            return
        host = await s.get(Host, vm.host_id)
        if host is None:
            return
        try:
            if ctr.state == "creating" or (
                ctr.state == "restarting"
                and (ctr.next_restart_at is None or ctr.next_restart_at <= now)
            ):
                reason = "create" if ctr.state == "creating" else "restart-policy"
                if reason == "restart-policy" and ctr.next_restart_at is not None:
                    ctr.restart_count += 1  # (a VM restart counted when it was asked for)
                st = await _guest_start(s, state, ctr, vm, host)
                ctr.next_restart_at = None
                _apply_state(ctr, st)
                CONTAINER_STARTS.labels(reason).inc()
                await s.commit()  # seen at once: the poll below is another guest call
            if ctr.state == "running":
                st = await _poll(state, ctr, host)
                if st.get("state") == "exited":
                    _apply_state(ctr, st)
                    CONTAINER_EXITS.labels("ok" if ctr.exit_code == 0 else "error").inc()
                    await s.flush()  # its own event: container.exited, then .restarting
            if ctr.state == "exited" and wants_restart(ctr):
                ctr.state = "restarting"
                ctr.next_restart_at = now + timedelta(seconds=backoff_s(ctr.restart_count))
        except (AgentError, Conflict) as exc:
            ctr.last_error = str(exc)[-2000:]


async def _vm_failed(
    s: AsyncSession, state: ManagerState, ctr: Container, vm: Vm, now: datetime
) -> None:
    """The container's VM failed (crashed, or did not boot). A container that ran (or was
    being created) has exited with the VM's error; the restart policy then applies as for a
    failed entrypoint — ``always`` and ``on-failure`` (within its maximum) restart the VM
    through the VM engine after the backoff, counting a restart, and the entrypoint starts
    once the VM runs; ``no`` leaves it ``exited`` with the error."""
    if ctr.state in ("creating", "running") or (
        ctr.state == "restarting" and ctr.next_restart_at is None  # the restarted VM failed
    ):
        ctr.last_error = ("the container's VM failed: " + (vm.state_reason or "unknown"))[-2000:]
        ctr.finished_at = now
        ctr.state = "exited"
        CONTAINER_EXITS.labels("vm-failed").inc()
        await s.flush()  # its own event: container.exited, then .restarting
        if wants_restart(ctr, vm_failed=True):
            ctr.state = "restarting"
            ctr.next_restart_at = now + timedelta(seconds=backoff_s(ctr.restart_count))
        return
    if ctr.state != "restarting" or ctr.next_restart_at is None or ctr.next_restart_at > now:
        return
    owner = await _owner(s, ctr.created_by_user_id)
    if owner is None:
        return
    ctr.restart_count += 1
    ctr.next_restart_at = None
    try:
        _vm, op = await vms.act(db_session=s, state=state, principal=owner, vm_id=vm.id,
                                action="start")  # fmt: skip
    except Problem as exc:  # e.g. over quota, busy: try again after the next backoff
        ctr.restart_count -= 1
        ctr.last_error = f"restarting the VM was refused: {exc.detail}"[-2000:]
        ctr.next_restart_at = now + timedelta(seconds=backoff_s(ctr.restart_count))
        return
    CONTAINER_STARTS.labels("vm-restart").inc()
    log.info("containers.vm_restart", container_id=ctr.id, vm_id=vm.id, operation_id=op.id)


async def _owner(s: AsyncSession, user_id: str) -> Principal | None:
    """The container's owner, for what the loop does on their behalf (a disabled or removed
    owner's containers are not restarted)."""
    user = await s.get(User, user_id)
    if user is None or user.disabled:
        return None
    return principal_for(user)


async def reconcile_once(state: ManagerState) -> int:
    """One pass over the containers that may need work; returns how many were looked at."""
    async with state.db.session() as s:
        ids = list((await s.execute(
            select(Container.id).where(Container.state.in_(("creating", "running", "restarting",
                                                            "exited")),
                                       Container.desired_state == "running")
        )).scalars())  # fmt: skip
    for ctr_id in ids:
        try:
            await _reconcile_one(state, ctr_id)
        except Exception:  # one bad container must not stop the others
            log.exception("containers.reconcile_error", container_id=ctr_id)
    return len(ids)


async def start(state: ManagerState) -> None:
    """Start-up hook: the containers loop, in the replica holding its lease."""
    state.spawn(run_leased(state, LEASE, INTERVAL_S, reconcile_once), name="containers")


async def upload_archive(
    *, state: ManagerState, principal: Principal, name: str, content_length: str | None,
    body: AsyncIterable[bytes],
) -> ContainerImage:  # fmt: skip
    """Receive an OCI or docker archive as the raw request body (streamed to disk, at most
    ``max_upload_bytes``) and import it; the caller is authorized before a byte is read."""
    ensure_can_create(principal, "container_image.import", "container_image")
    if "write" not in principal.scopes:
        raise Forbidden(
            "this token has read scope only; imports need the 'write' scope",
            audit=denial("container_image.import", "container_image"),
        )
    limit = state.settings.max_upload_bytes
    declared = uploads.declared_length(content_length, limit)
    root = images_dir(state)
    async with uploads.upload_slot(state):
        await asyncio.to_thread(uploads.ensure_free_space, root, declared or limit)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            archive = Path(tmp) / "upload.tar"
            got = 0
            with open(archive, "wb") as fh:
                async for chunk in body:
                    got += len(chunk)
                    if got > limit:
                        raise PayloadTooLarge(
                            f"the archive exceeds max_upload_bytes ({limit} bytes)"
                        )
                    await asyncio.to_thread(fh.write, chunk)
            return await import_image(state=state, principal=principal, name=name,
                                      archive=archive)  # fmt: skip
