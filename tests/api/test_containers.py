"""Container images and containers through the API, against a fake agent (the real guest:
tests/vm/test_containers.py): imports (malicious layers refused), sealed credentials,
RBAC and audit, the spec hook that attaches the image disk, and the restart-policy loop."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from nexus.core.timeutil import utcnow
from nexus.guest.container import RUN_MAIN
from nexus.hostapi.agent_client import AgentError
from nexus.hostapi.models import AgentExecRequest, AgentExecResult
from nexus.manager.features.audit.models import AuditEvent
from nexus.manager.features.containers import service as containers
from nexus.manager.features.containers.models import Container, ContainerImage
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.images.models import Image
from nexus.manager.features.ttl import service as ttl
from nexus.manager.features.vms import spec as vm_spec
from nexus.manager.features.vms.models import Vm

from .conftest import (
    ADMIN_PASSWORD,
    UserMaker,
    import_image,
    login,
    register_host,
    seed_vms,
)
from .test_guest_api import audit_rows, ws_attempt


def _layer(entries: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """(name, file content | None, symlink target | None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in entries:
            ti = tarfile.TarInfo(name)
            if link is not None:
                ti.type, ti.linkname = tarfile.SYMTYPE, link
                tar.addfile(ti)
            else:
                ti.size = len(data or b"")
                ti.mode = 0o755
                tar.addfile(ti, io.BytesIO(data or b""))
    return gzip.compress(buf.getvalue())


def oci_archive(layers: list[bytes], config: dict[str, Any]) -> bytes:
    """An OCI image layout as one tar (what `skopeo copy ... oci-archive:` writes)."""
    blobs: dict[str, bytes] = {}

    def add(data: bytes) -> dict[str, Any]:
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return {"digest": f"sha256:{d}", "size": len(data)}

    manifest = {"schemaVersion": 2, "config": add(json.dumps(config).encode()),
                "layers": [add(x) for x in layers]}  # fmt: skip
    index = {"schemaVersion": 2, "manifests": [add(json.dumps(manifest).encode())]}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
                 "index.json": json.dumps(index).encode(),
                 **{f"blobs/sha256/{d}": b for d, b in blobs.items()}}  # fmt: skip
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return out.getvalue()


GOOD = oci_archive(
    [_layer([("bin/app", b"#!/bin/sh\necho hi\n", None)])],
    {"config": {"Entrypoint": ["/bin/app"], "Cmd": ["--flag"], "Env": ["A=1"],
                "User": "1000", "ExposedPorts": {"80/tcp": {}}}},
)  # fmt: skip


async def _import(
    client: httpx.AsyncClient, h: dict[str, str], name: str, body: bytes
) -> httpx.Response:
    return await client.post(
        "/v1/container-images/import",
        params={"name": name},
        content=body,
        headers={**h, "Content-Type": "application/x-tar"},
    )


async def test_an_archive_over_the_request_body_limit_imports_under_max_upload_bytes(
    app_factory: Any,
) -> None:
    """The import streams its body and checks ``max_upload_bytes`` itself: the 1 MiB limit of
    ordinary requests must not cut it (an image of a few MiB is the normal case)."""
    big = oci_archive(
        [_layer([("bin/app", b"#!/bin/sh\necho hi\n", None), ("blob", os.urandom(3 << 20), None)])],
        {"config": {"Entrypoint": ["/bin/app"]}},
    )
    client = await app_factory(max_body_bytes=1 << 20)
    h = await login(client, "admin", ADMIN_PASSWORD)
    assert len(big) > 3 << 20
    r = await _import(client, h, "big", big)
    assert r.status_code == 201, r.text
    small = await app_factory(max_body_bytes=1 << 20, max_upload_bytes=1 << 20)
    h = await login(small, "admin", ADMIN_PASSWORD)
    r = await _import(small, h, "big", big)
    assert r.status_code == 413, r.text
    assert "max_upload_bytes" in r.json()["detail"]


async def test_import_keeps_config_and_caches_per_digest(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    r = await _import(client, admin, "app", GOOD)
    assert r.status_code == 201, r.text
    img = r.json()
    assert img["config"]["entrypoint"] == ["/bin/app"] and img["config"]["user"] == "1000"
    assert img["config"]["exposed_ports"] == ["80/tcp"] and not img["has_registry_password"]
    r2 = await _import(client, admin, "app-again", GOOD)
    assert r2.status_code == 201 and r2.json()["rootfs_sha256"] == img["rootfs_sha256"]
    state = client._transport.app.state.nexus  # type: ignore[attr-defined]
    dirs = [p for p in containers.images_dir(state).iterdir() if not p.name.startswith(".")]
    assert len(dirs) == 1  # one unpack per manifest digest
    r = await client.get("/v1/container-images", headers=admin)
    assert {i["name"] for i in r.json()["items"]} == {"app", "app-again"}
    assert (await _import(client, admin, "app", GOOD)).status_code == 409


@pytest.mark.parametrize(
    "entries",
    [
        [("../../escape", b"x", None)],
        [("etc", None, "/etc"), ("etc/escape", b"x", None)],
    ],
)
async def test_malicious_layers_are_refused(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    entries: list[tuple[str, bytes | None, str | None]],
) -> None:
    r = await _import(client, admin, "evil", oci_archive([_layer(entries)], {"config": {}}))
    assert r.status_code == 400, r.text
    assert "refused" in r.json()["detail"]
    assert not Path("/etc/escape").exists()
    assert (await client.get("/v1/container-images", headers=admin)).json()["items"] == []


async def test_viewers_may_not_import_and_others_do_not_see(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    _, viewer = await make_user("vic", "viewer")
    _, other = await make_user("oli", "operator")
    assert (await _import(client, viewer, "v", GOOD)).status_code == 403
    r = await _import(client, admin, "mine", GOOD)
    assert (
        await client.get(f"/v1/container-images/{r.json()['id']}", headers=other)
    ).status_code == 404
    assert (
        await client.delete(f"/v1/container-images/{r.json()['id']}", headers=other)
    ).status_code == 404
    r = await client.post("/v1/containers", json={"name": "c", "image": "mine"}, headers=viewer)
    assert r.status_code == 403


async def test_registry_password_is_sealed_and_never_returned(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    r = await _import(client, admin, "priv", GOOD)
    state = client._transport.app.state.nexus  # type: ignore[attr-defined]
    async with state.db.session() as s:
        row = await s.get(ContainerImage, r.json()["id"])
        assert row is not None
        row.registry_username, row.registry_password = "bob", "hunter2-secret"
    async with state.db.session() as s:
        raw = (await s.execute(text("SELECT registry_password FROM container_images"))).scalar()
    assert raw and "hunter2" not in str(raw)
    got = await client.get(f"/v1/container-images/{r.json()['id']}", headers=admin)
    assert got.json()["has_registry_password"] is True and "hunter2" not in got.text


class FakeAgent:
    """Answers the guest container runtime's commands like a guest would; keeps volume files
    and port forwards as sets; a VM's own calls (put/start) fail like an absent agent."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.state = "state=running code= pid=7 started=1 finished="
        self.logs = b""
        self.volumes: set[str] = set()
        self.forwards: set[tuple[int, str]] = set()
        self.refuse_port: int | None = None
        self.deleted_vms: list[str] = []
        self.old_image = False

    async def put_volume(self, volume_id: str, size_mib: int, filesystem: str) -> None:
        self.volumes.add(volume_id)

    async def add_port_forward(
        self, vm_id: str, host_port: int, guest_ip: str, guest_port: int, protocol: str
    ) -> None:
        if host_port == self.refuse_port:
            raise AgentError(409, "conflict", f"host port {host_port} is in use")
        self.forwards.add((host_port, protocol))

    async def remove_port_forward(self, vm_id: str, host_port: int, protocol: str) -> None:
        self.forwards.discard((host_port, protocol))

    async def delete_vm(self, vm_id: str) -> None:
        self.deleted_vms.append(vm_id)

    def __getattr__(self, name: str) -> Any:
        async def absent(*_a: Any, **_k: Any) -> Any:
            raise AgentError(0, "unreachable", f"fake agent: no {name}")

        return absent

    async def exec_vm(self, vm_id: str, req: AgentExecRequest) -> AgentExecResult:
        if req.argv[: len(containers.GUEST_START)] == containers.GUEST_START:
            argv = ["start", *req.argv[len(containers.GUEST_START) :]]  # the fast start
            if self.old_image:  # an image from before container-start.sh
                self.calls.append(["fast-start-missing"])
                err = base64.b64encode(b"sh: can't open 'container-start.sh': No such file")
                return AgentExecResult(exit_code=2, stdout_b64="", stderr_b64=err.decode(),
                                       duration_ms=1, timed_out=False, truncated=False)  # fmt: skip
        else:
            argv = req.argv[len(containers.GUEST_PY) :]
        self.calls.append(argv)
        out = b""
        if argv[0] in ("start", "status", "stop"):
            out = self.state.encode() + b"\n"
        elif argv[0] == "logs":
            out = self.logs
        elif argv[0] == "poll":
            out = self.state.encode() + b" seq=99\n" + self.logs
        return AgentExecResult(exit_code=0, stdout_b64=base64.b64encode(out).decode(),
                               stderr_b64="", duration_ms=1, timed_out=False,
                               truncated=False)  # fmt: skip


async def _settle(client: httpx.AsyncClient, h: dict[str, str]) -> None:
    for _ in range(200):
        ops = (await client.get("/v1/operations", headers=h)).json()["items"]
        if all(o["status"] not in ("pending", "running") for o in ops):
            return
        await asyncio.sleep(0.05)


async def test_container_lifecycle_with_restart_policy(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, make_user: UserMaker,
) -> None:  # fmt: skip
    state = client._transport.app.state.nexus  # type: ignore[attr-defined]
    for task in [t for t in state.tasks if t.get_name() == containers.LEASE]:
        task.cancel()  # this test runs the loop's passes by hand
    await register_host(client, admin, "h1")
    base = await import_image(client, admin, tmp_path)
    r = await _import(client, admin, "app", GOOD)
    r = await client.post("/v1/containers", headers=admin, json={
        "name": "web", "image": "app", "base_image": base["id"], "env": {"B": "2"},
        "restart_policy": "on-failure:2"})  # fmt: skip
    assert r.status_code == 201, r.text
    ctr = r.json()
    assert ctr["state"] == "creating" and ctr["spec"]["argv"] == ["/bin/app", "--flag"]
    assert ctr["spec"]["env"] == {"A": "1", "B": "2"} and ctr["spec"]["user"] == "1000"
    await _settle(client, admin)  # the VM's create operation fails: no real agent
    async with state.db.session() as s:
        vm = await s.get(Vm, ctr["vm_id"])
        assert vm is not None
        vm.state = "running"
        host = await s.get(Host, vm.host_id)
        assert host is not None
        host.last_heartbeat_at = utcnow()
        # the VM's spec carries the container image's disk (read-only, content-addressed)
        base_row = await s.get(Image, vm.image_id)
        cimg = await s.get(ContainerImage, ctr["image_id"])
        assert base_row is not None and cimg is not None
        spec = await vm_spec.fill_spec(s, vm_spec.base_spec(vm, base_row))
        assert [d.rootfs_sha256 for d in spec.image_disks] == [cimg.rootfs_sha256]
        owner = vm.created_by_user_id
    # a VM labelled as someone's container (labels are tenant input) gets no image disk
    forged = {containers.LABEL: ctr["id"], containers.IMAGE_LABEL: ctr["image_id"]}
    other_id, _ = await make_user("mallory", "operator")
    [mine, theirs] = [
        (await seed_vms(state, uid, ["stopped"], labels=forged))[0] for uid in (owner, other_id)
    ]
    async with state.db.session() as s:
        for vm_id in (mine, theirs):
            row = await s.get(Vm, vm_id)
            assert row is not None
            forged_spec = await vm_spec.fill_spec(s, vm_spec.base_spec(row, base_row))
            assert forged_spec.image_disks == []
    fake = FakeAgent()
    monkeypatch.setattr(hosts, "agent_client", lambda state, host: fake)
    fake.logs = b"1 1700000000.5 o hello\nnot a line\n2 1700000001.0 e oops\n"
    assert await containers.reconcile_once(state) == 1
    got = (await client.get(f"/v1/containers/{ctr['id']}", headers=admin)).json()
    assert got["state"] == "running" and fake.calls[0][0] == "start"
    assert fake.calls[0][fake.calls[0].index("--") + 1 :] == ["/bin/app", "--flag"]
    logs = (await client.get(f"/v1/containers/{ctr['id']}/logs", headers=admin)).json()
    assert [(x["stream"], x["line"]) for x in logs["lines"]] == [
        ("stdout", "hello"), ("stderr", "oops")]  # fmt: skip
    # it crashes: exited, then restarting after a backoff, with a growing count
    fake.state, fake.logs = "state=exited code=3 pid=7 started=1 finished=2", b""
    await containers.reconcile_once(state)
    got = (await client.get(f"/v1/containers/{ctr['id']}", headers=admin)).json()
    assert got["state"] == "restarting" and got["exit_code"] == 3 and got["next_restart_at"]
    async with state.db.session() as s:
        row = await s.get(Container, ctr["id"])
        assert row is not None
        row.next_restart_at = utcnow()
    fake.state = "state=running code= pid=8 started=3 finished="
    await containers.reconcile_once(state)
    got = (await client.get(f"/v1/containers/{ctr['id']}", headers=admin)).json()
    assert got["state"] == "running" and got["restart_count"] == 1
    assert containers.backoff_s(0) == 1 and containers.backoff_s(3) == 8
    assert containers.backoff_s(20) == containers.BACKOFF_MAX_S
    # stop: SIGTERM then SIGKILL in the guest; no restart afterwards
    fake.state = "state=exited code=143 pid=8 started=3 finished=4"
    r = await client.post(f"/v1/containers/{ctr['id']}/stop", headers=admin)
    assert r.status_code == 200 and r.json()["state"] == "stopped" and r.json()["exit_code"] == 143
    assert fake.calls[-2][0] == "stop" or fake.calls[-1][0] in ("stop", "logs")
    await containers.reconcile_once(state)
    assert (await client.get(f"/v1/containers/{ctr['id']}", headers=admin)).json()[
        "state"
    ] == "stopped"
    # exec runs through the guest runtime's exec, in the container's user
    fake.state = "state=running code= pid=9 started=5 finished="
    r = await client.post(f"/v1/containers/{ctr['id']}/start", headers=admin)
    assert r.status_code == 200 and r.json()["state"] == "running"
    r = await client.post(f"/v1/containers/{ctr['id']}/exec", headers=admin,
                          json={"command": ["cat", "/etc/os-release"]})  # fmt: skip
    assert r.status_code == 200, r.text
    assert fake.calls[-1][:3] == ["exec", "--user", "1000"]
    async with state.db.session() as s:
        actions = set((await s.execute(select(AuditEvent.action))).scalars())
        types = set((await s.execute(text("SELECT type FROM events"))).scalars())
    assert {"container.create", "container.stop", "container.start", "container.exec",
            "container_image.import"} <= actions  # fmt: skip
    assert {"container.created", "container.started", "container.exited",
            "container.restarting", "container.stopped"} <= types, types  # fmt: skip


async def test_remote_agents_fetch_the_image_disk_by_host_token(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    host = await register_host(client, admin, "h2")
    r = await _import(client, admin, "app", GOOD)
    sha = r.json()["rootfs_sha256"]
    url = f"/v1/hosts/{host['host_id']}/images/cimg-{sha[:24]}/files/rootfs.ext4"
    got = await client.get(url, headers={"Authorization": f"Bearer {host['host_token']}"})
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha
    assert got.headers["X-Content-SHA256"] == sha
    assert (await client.get(url, headers=admin)).status_code == 401
    bad = url.replace(sha[:24], "0" * 24)
    r = await client.get(bad, headers={"Authorization": f"Bearer {host['host_token']}"})
    assert r.status_code == 404


async def _volume(client: httpx.AsyncClient, h: dict[str, str], name: str, **kw: Any) -> str:
    r = await client.post("/v1/volumes", json={"name": name, "size_mib": 16, **kw}, headers=h)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_volumes_validation_rbac_conflicts_and_rollback(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, make_user: UserMaker,
) -> None:  # fmt: skip
    state = client._transport.app.state.nexus  # type: ignore[attr-defined]
    for task in [t for t in state.tasks if t.get_name() == containers.LEASE]:
        task.cancel()
    await register_host(client, admin, "h1")
    base = await import_image(client, admin, tmp_path)
    r = await client.patch(f"/v1/images/{base['id']}", json={"public": True}, headers=admin)
    assert r.status_code == 200, r.text
    _, alice = await make_user("alice", "operator")
    _, bob = await make_user("bob", "operator")
    _, vic = await make_user("vic", "viewer")
    for h in (alice, bob):
        assert (await _import(client, h, "app", GOOD)).status_code == 201
    fake = FakeAgent()
    monkeypatch.setattr(hosts, "agent_client", lambda state, host: fake)
    data = await _volume(client, alice, "data")
    raw = await _volume(client, alice, "rawvol", filesystem="raw")
    bobs = await _volume(client, bob, "bobs")

    def body(**kw: Any) -> dict[str, Any]:
        return {"name": "c1", "image": "app", "base_image": base["id"], **kw}

    async def create(h: dict[str, str], **kw: Any) -> httpx.Response:
        return await client.post("/v1/containers", headers=h, json=body(**kw))

    # validation: absolute, no '..', not '/', not under /proc /sys /dev, no nesting
    for bad in ("data", "/", "/a/../etc", "/proc", "/sys/x", "/dev/shm", "/a b", "/x\n"):
        r = await create(alice, volumes=[{"volume": data, "mount_path": bad}])
        assert r.status_code == 422, (bad, r.text)
    r = await create(alice, volumes=[{"volume": data, "mount_path": "/a"},
                                     {"volume": raw, "mount_path": "/a/b"}])  # fmt: skip
    assert r.status_code == 422 and "nest" in r.text
    r = await create(alice, volumes=[{"volume": data, "mount_path": "/a"},
                                     {"volume": data, "mount_path": "/b"}])  # fmt: skip
    assert r.status_code == 422
    r = await create(alice, volumes=[{"volume": raw, "mount_path": "/raw"}])
    assert r.status_code == 400 and "ext4" in r.json()["detail"]
    # RBAC: another operator's volume is not seen (404); a viewer may not create (403)
    r = await create(alice, volumes=[{"volume": bobs, "mount_path": "/d"}])
    assert r.status_code == 404, r.text
    r = await create(alice, volumes=[{"volume": "bobs", "mount_path": "/d"}])
    assert r.status_code == 404, r.text
    assert (await create(vic, volumes=[{"volume": data, "mount_path": "/d"}])).status_code == 403
    # a refused port undoes everything: no container, no VM, no attachment, no forward
    fake.refuse_port = 20999
    r = await create(alice, volumes=[{"volume": data, "mount_path": "/d"}],
                     ports=[{"container_port": 80, "host_port": 20998},
                            {"container_port": 81, "host_port": 20999}])  # fmt: skip
    assert r.status_code in (409, 502), r.text
    assert fake.forwards == set()
    assert (await client.get("/v1/containers", headers=alice)).json()["items"] == []
    assert (await client.get("/v1/vms", headers=alice)).json()["items"] == []
    vol = (await client.get(f"/v1/volumes/{data}", headers=alice)).json()
    assert vol["attachment"] is None, vol
    # attached: read-write at /srv/data, in the VM's spec, on the guest's start line
    r = await create(alice, volumes=[{"volume": "data", "mount_path": "/srv//data/"}])
    assert r.status_code == 201, r.text
    ctr = r.json()
    assert ctr["spec"]["volumes"] == [{"volume_id": data, "mount_path": "/srv/data",
                                       "read_only": False}]  # fmt: skip
    assert data in fake.volumes
    vol = (await client.get(f"/v1/volumes/{data}", headers=alice)).json()
    assert vol["attachment"]["vm_id"] == ctr["vm_id"], vol
    # the same volume for a second container: a clear 409
    r = await create(alice, name="c2", volumes=[{"volume": data, "mount_path": "/d"}])
    assert r.status_code == 409 and "already attached (read-write)" in r.json()["detail"]
    await _settle(client, alice)
    async with state.db.session() as s:
        vm = await s.get(Vm, ctr["vm_id"])
        assert vm is not None
        vm.state = "running"
        host = await s.get(Host, vm.host_id)
        assert host is not None
        host.last_heartbeat_at = utcnow()
        base_row = await s.get(Image, vm.image_id)
        assert base_row is not None
        spec = await vm_spec.fill_spec(s, vm_spec.base_spec(vm, base_row))
        assert [v.id for v in spec.volumes] == [data] and len(spec.image_disks) == 1
    await containers.reconcile_once(state)
    start = fake.calls[0]
    assert start[0] == "start" and start[start.index("--device") + 1] == "/dev/vdc"
    assert start[start.index("--volume") + 1] == "/dev/vdb:rw:/srv/data"
    async with state.db.session() as s:
        actions = [a for a, in (await s.execute(
            select(AuditEvent.action).where(AuditEvent.resource_id == data))).all()]  # fmt: skip
    assert "volume.attach" in actions
    # deleting the container frees the volume (the attachment goes with the VM)
    r = await client.delete(f"/v1/containers/{ctr['id']}", headers=alice)
    assert r.status_code in (202, 204), r.text
    await _settle(client, alice)
    async with state.db.session() as s:  # the fake cannot delete VMs: drop the row as done
        row = await s.get(Vm, ctr["vm_id"])
        if row is not None:
            await s.delete(row)
    vol = (await client.get(f"/v1/volumes/{data}", headers=alice)).json()
    assert vol["attachment"] is None, vol
    r = await create(alice, name="c3", volumes=[{"volume": data, "mount_path": "/d",
                                                 "read_only": True}])  # fmt: skip
    assert r.status_code == 201, r.text


async def test_shell_websocket_is_authenticated_and_scoped(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path, make_user: UserMaker
) -> None:
    state = client._transport.app.state.nexus  # type: ignore[attr-defined]
    for task in [t for t in state.tasks if t.get_name() == containers.LEASE]:
        task.cancel()
    await register_host(client, admin, "h1")
    base = await import_image(client, admin, tmp_path)
    r = await client.patch(f"/v1/images/{base['id']}", json={"public": True}, headers=admin)
    _, alice = await make_user("alice", "operator")
    _, bob = await make_user("bob", "operator")
    assert (await _import(client, alice, "app", GOOD)).status_code == 201
    body = {"name": "sh", "image": "app", "base_image": base["id"]}
    r = await client.post("/v1/containers", headers=alice, json=body)
    assert r.status_code == 201, r.text
    ctr = r.json()
    await _settle(client, alice)  # the VM's create fails (no agent): it is not running
    path = f"/v1/containers/{ctr['id']}/shell/ws"
    # no credentials, a junk bearer, a forged ticket: 401 before any upgrade
    assert (await ws_attempt(client, path)).status == 401
    assert (await ws_attempt(client, path, headers={"Authorization": "Bearer x"})).status == 401
    assert (await ws_attempt(client, path, query="ticket=nxt_forged")).status == 401
    # someone else's container is not there, over the socket and for tickets
    assert (await ws_attempt(client, path, headers=bob)).status == 404
    r = await client.post(f"/v1/containers/{ctr['id']}/shell/ticket", headers=bob)
    assert r.status_code == 404
    assert (await client.post(f"/v1/containers/{ctr['id']}/shell/ticket")).status_code == 401
    # not running: 409
    out = await ws_attempt(client, path, headers=alice)
    assert out.status == 409, out.body
    async with state.db.session() as s:
        vm = await s.get(Vm, ctr["vm_id"])
        row = await s.get(Container, ctr["id"])
        assert vm is not None and row is not None
        vm.state, row.state = "running", "running"
    # the owner gets past authentication: the (unreachable) host agent answers 502
    out = await ws_attempt(client, path, headers=alice)
    assert out.status == 502, out.body
    r = await client.post(f"/v1/containers/{ctr['id']}/shell/ticket", headers=alice)
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["ws_path"] == path and t["ticket"].startswith("nxt_")
    # a container ticket opens no VM shell (and is spent by trying)
    out = await ws_attempt(
        client, f"/v1/vms/{ctr['vm_id']}/shell/ws", query=f"ticket={t['ticket']}"
    )
    assert out.status == 401
    assert (await ws_attempt(client, path, query=f"ticket={t['ticket']}")).status == 401
    # a VM shell ticket opens no container shell
    r = await client.post(f"/v1/vms/{ctr['vm_id']}/shell/ticket", headers=alice)
    assert r.status_code == 201, r.text
    out = await ws_attempt(client, path, query=f"ticket={r.json()['ticket']}")
    assert out.status == 401
    # a fresh container ticket works once
    t = (await client.post(f"/v1/containers/{ctr['id']}/shell/ticket", headers=alice)).json()
    assert (await ws_attempt(client, path, query=f"ticket={t['ticket']}")).status == 502
    assert (await ws_attempt(client, path, query=f"ticket={t['ticket']}")).status == 401
    rows = await audit_rows(client, admin, resource_id=ctr["id"])
    assert "container.shell.ticket" in {x["action"] for x in rows}
    rows = await audit_rows(client, admin, action="container.shell")
    assert rows and {x["outcome"] for x in rows} == {"denied"}  # the refused 401s
    assert containers.shell_command("app") == (
        "PYTHONPATH=/opt/nexus/lib exec python3 -S -c 'import sys; from nexus.guest.container "
        "import main; sys.exit(main(sys.argv[1:]))' shell --user app"
    )
    assert containers.GUEST_PY[-1] == RUN_MAIN  # the manager and the guest agree


async def _running_container(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path, **fields: Any
) -> tuple[Any, dict[str, Any]]:
    """A container whose VM the test marks running (the loop's passes are run by hand)."""
    state = client._transport.app.state.nexus  # type: ignore[attr-defined]
    for task in [t for t in state.tasks if t.get_name() == containers.LEASE]:
        task.cancel()
    await register_host(client, admin, "h1")
    base = await import_image(client, admin, tmp_path)
    assert (await _import(client, admin, "app", GOOD)).status_code == 201
    body = {"name": "c", "image": "app", "base_image": base["id"], **fields}
    r = await client.post("/v1/containers", headers=admin, json=body)
    assert r.status_code == 201, r.text
    await _settle(client, admin)
    async with state.db.session() as s:
        vm = await s.get(Vm, r.json()["vm_id"])
        assert vm is not None
        vm.state = "running"
        host = await s.get(Host, vm.host_id)
        assert host is not None
        host.last_heartbeat_at = utcnow()
    return state, r.json()


async def _vm_fails(state: Any, vm_id: str) -> None:
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        assert vm is not None
        vm.state, vm.state_reason = "failed", "kernel panic (test)"


@pytest.mark.parametrize("policy", ["always", "on-failure:1", "no"])
async def test_a_failed_vm_follows_the_restart_policy(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, policy: str,
) -> None:  # fmt: skip
    state, ctr = await _running_container(client, admin, tmp_path, restart_policy=policy)
    fake = FakeAgent()
    monkeypatch.setattr(hosts, "agent_client", lambda state, host: fake)
    await containers.reconcile_once(state)
    get = f"/v1/containers/{ctr['id']}"
    assert (await client.get(get, headers=admin)).json()["state"] == "running"
    await _vm_fails(state, ctr["vm_id"])
    await containers.reconcile_once(state)
    got = (await client.get(get, headers=admin)).json()
    assert "kernel panic (test)" in got["last_error"], got
    if policy == "no":  # exited with the error, for good
        assert got["state"] == "exited" and got["restart_count"] == 0, got
        await containers.reconcile_once(state)
        assert (await client.get(get, headers=admin)).json()["state"] == "exited"
        return
    assert got["state"] == "restarting" and got["next_restart_at"], got
    # not before the backoff
    await containers.reconcile_once(state)
    ops = (await client.get("/v1/operations", headers=admin)).json()["items"]
    assert not [o for o in ops if o["kind"] == "vm.start"]
    async with state.db.session() as s:
        row = await s.get(Container, ctr["id"])
        assert row is not None
        row.next_restart_at = utcnow()
    await containers.reconcile_once(state)  # the VM is started through the VM engine
    got = (await client.get(get, headers=admin)).json()
    assert got["state"] == "restarting" and got["restart_count"] == 1, got
    ops = (await client.get("/v1/operations", headers=admin)).json()["items"]
    assert [o for o in ops if o["kind"] == "vm.start" and o["resource_id"] == ctr["vm_id"]]
    await _settle(client, admin)  # (the fake agent cannot boot it: the VM fails again)
    async with state.db.session() as s:
        vm = await s.get(Vm, ctr["vm_id"])
        assert vm is not None
        assert vm.state == "failed"
        vm.state = "running"  # say it booted
    fake.calls.clear()
    await containers.reconcile_once(state)  # then the entrypoint starts, not counted twice
    got = (await client.get(get, headers=admin)).json()
    assert got["state"] == "running" and got["restart_count"] == 1, got
    assert fake.calls[0][0] == "start"
    # it fails again: `always` restarts after a longer backoff; `on-failure:1` is done
    await _vm_fails(state, ctr["vm_id"])
    await containers.reconcile_once(state)
    got = (await client.get(get, headers=admin)).json()
    if policy == "always":
        assert got["state"] == "restarting", got
        async with state.db.session() as s:
            row = await s.get(Container, ctr["id"])
            assert row is not None and row.next_restart_at is not None
            assert (row.next_restart_at - utcnow()).total_seconds() > 1.2  # 2 s after 1 restart
    else:
        assert got["state"] == "exited" and got["restart_count"] == 1, got
    async with state.db.session() as s:
        types = list((await s.execute(text(
            "SELECT type FROM events WHERE resource_id = :i ORDER BY id"), {"i": ctr["id"]}
        )).scalars())  # fmt: skip
    assert "container.exited" in types and "container.restarting" in types, types


async def test_ttl_expiry_deletes_the_whole_container(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    state, ctr = await _running_container(client, admin, tmp_path, ttl_s=600)
    fake = FakeAgent()
    monkeypatch.setattr(hosts, "agent_client", lambda state, host: fake)
    fake.logs = b"1 1700000000.5 o hello\n"
    await containers.reconcile_once(state)
    log_dir = containers._log_dir(state, ctr["id"])
    assert log_dir.exists()
    # a VM labelled as this container but not its VM does not take the container with it
    [other] = await seed_vms(state, ctr["created_by_user_id"], ["stopped"],
                             labels={containers.LABEL: ctr["id"]})  # fmt: skip
    async with state.db.session() as s:
        for vm_id in (ctr["vm_id"], other):
            vm = await s.get(Vm, vm_id)
            assert vm is not None
            vm.expires_at = utcnow()
    counts = await ttl.expire_due(state)
    assert counts["expired"] == 2, counts
    await _settle(client, admin)
    assert (await client.get(f"/v1/containers/{ctr['id']}", headers=admin)).status_code == 404
    assert not log_dir.exists()
    assert ctr["vm_id"] in fake.deleted_vms
    for vm_id in (ctr["vm_id"], other):  # the forged one expired as a plain VM
        assert (await client.get(f"/v1/vms/{vm_id}", headers=admin)).status_code == 404
    async with state.db.session() as s:
        q = select(AuditEvent.action).where(AuditEvent.resource_id == ctr["id"])
        actions = set((await s.execute(q)).scalars())
        ev = text("SELECT type FROM events WHERE resource_id = :i")
        types = set((await s.execute(ev, {"i": ctr["id"]})).scalars())
    assert {"container.ttl.expire", "container.delete"} <= actions, actions
    assert {"container.expired", "container.deleted"} <= types, types


async def test_images_without_the_fast_start_script_start_the_old_way(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    state, ctr = await _running_container(client, admin, tmp_path)
    fake = FakeAgent()
    fake.old_image = True
    monkeypatch.setattr(hosts, "agent_client", lambda state, host: fake)
    await containers.reconcile_once(state)
    got = (await client.get(f"/v1/containers/{ctr['id']}", headers=admin)).json()
    assert got["state"] == "running", got
    assert [c[0] for c in fake.calls[:2]] == ["fast-start-missing", "start"]
