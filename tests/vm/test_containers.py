"""Containers in real microVMs: Debian's docker-registry on loopback, an image built here from
a busybox tree and pushed with skopeo, pulled through Nexus, deployed, and checked from the
outside — logs, exec, the terminal WebSocket, a published port, a volume (written by the
first container, read read-only by the second after the first is gone), restart policy,
SIGTERM on stop, nothing left after delete. One all-in-one manager and two guests (the web
container and a crashing one).
"""

from __future__ import annotations

import itertools
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.aio import all_in_one
from tests.support.oci import build_oci_layout
from tests.support.server import LiveServer, free_port, wait_op

from .conftest import qemu_pids_under

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        shutil.which("docker-registry") is None or shutil.which("skopeo") is None,
        reason="needs Debian's docker-registry and skopeo (scripts/install-deps.sh --test)",
    ),
]
PW = "containers-admin-pw"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1, with the test image pushed as demo:1."""
    d = tmp_path_factory.mktemp("registry")
    port = free_port()
    cfg = d / "config.yml"
    cfg.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {d / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (d / "registry.log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        build_oci_layout(d / "layout")
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
             f"oci:{d / 'layout'}:1", f"docker://127.0.0.1:{port}/demo:1"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Env:
    srv: LiveServer
    h: dict[str, str]
    image_id: str

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.srv.url}{path}", headers=self.h, timeout=120, **kw)

    def wait_container(self, ctr_id: str, pred: Any, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        c: dict[str, Any] = {}
        while time.monotonic() < deadline:
            c = self.call("GET", f"/v1/containers/{ctr_id}").json()
            if pred(c):
                return c
            time.sleep(0.5)
        raise AssertionError(f"container never reached the state wanted: {c}")

    def logs(self, ctr_id: str) -> list[str]:
        r = self.call("GET", f"/v1/containers/{ctr_id}/logs")
        assert r.status_code == 200, r.text
        return [f"{x['stream']} {x['line']}" for x in r.json()["lines"]]


@pytest.fixture(scope="module")
def env(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A manager with the embedded agent, the default image built, demo:1 pulled."""
    state = tmp_path_factory.mktemp("ctr") / "state"
    env = {"NEXUS_STOP_TIMEOUT_S": "10", "NEXUS_PORT_FORWARD_HOST_LOCAL": "true"}
    with all_in_one(state, admin_password=PW, env=env) as a:
        srv, h = a.srv, a.h
        # a network of its own: a subnet no other manager on this machine uses (a second
        # bridge on the shared default subnet would take the host's route to the guest)
        cidr = f"10.219.{secrets.randbelow(200) + 20}.0/24"
        r = httpx.post(f"{srv.url}/v1/networks", json={"name": "ctrnet", "cidr": cidr}, headers=h)
        assert r.status_code == 201, r.text
        r = httpx.post(
            f"{srv.url}/v1/container-images",
            json={"reference": f"{registry}/demo:1", "name": "demo", "tls_verify": False},
            headers=h,
        )
        assert r.status_code == 202, r.text
        op = wait_op(srv, h, r.json(), timeout=300)
        assert op["status"] == "succeeded", op
        yield Env(srv, h, op["result"]["image_id"])


def test_pulled_image_keeps_its_config(env: Env) -> None:
    img = env.call("GET", f"/v1/container-images/{env.image_id}").json()
    assert img["config"]["entrypoint"] == ["/app/run.sh"] and img["config"]["user"] == "app"
    assert img["config"]["exposed_ports"] == ["8080/tcp"] and img["digest"].startswith("sha256:")


def test_web_container_end_to_end(env: Env) -> None:
    r = env.call("POST", "/v1/volumes", json={"name": "data", "size_mib": 16})
    assert r.status_code == 201, r.text
    r = env.call("POST", "/v1/containers", json={
        "name": "web", "image": "demo", "env": {"EXTRA": "1"}, "network": "ctrnet",
        "ports": [{"container_port": 8080}], "memory_mib": 256,
        "volumes": [{"volume": "data", "mount_path": "/srv/data"}]})  # fmt: skip
    assert r.status_code == 201, r.text
    ctr = env.wait_container(r.json()["id"], lambda c: c["state"] in ("running", "failed"))
    assert ctr["state"] == "running", ctr
    # logs: the entrypoint ran as the image's user, with its env and workdir
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("hello" in x for x in env.logs(ctr["id"])):
        time.sleep(0.5)
    lines = env.logs(ctr["id"])
    assert "stdout container says hello FOO=from-image uid=1000 cwd=/app" in lines, lines
    assert "stderr to stderr" in lines
    # exec sees the image's files (both layers), not the base image's
    r = env.call("POST", f"/v1/containers/{ctr['id']}/exec",
                 json={"command": ["cat", "/www/index.html", "/www/marker.txt"]})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "hello from the container image\nsecond layer\n", r.json()
    r = env.call("POST", f"/v1/containers/{ctr['id']}/exec", json={"command": ["ls", "/opt"]})
    assert r.json()["exit_code"] != 0  # /opt/nexus (the guest agent) is the base image's
    r = env.call("POST", f"/v1/containers/{ctr['id']}/exec", json={"command": ["id", "-u"]})
    assert r.json()["stdout"].strip() == "1000"
    # the volume is mounted at /srv/data: write through it (as root: a fresh volume's root
    # directory is root's, as in Docker)
    r = env.call("POST", f"/v1/containers/{ctr['id']}/exec", json={
        "command": ["sh", "-c", "echo persisted > /srv/data/f && cat /srv/data/f"],
        "user": "0"})  # fmt: skip
    assert r.json()["stdout"] == "persisted\n", r.json()
    # the terminal WebSocket: a shell inside the container's root, as the image's user
    out = _shell(env, ctr["id"], b"id -u; ls /; exit 7\n")
    assert out["exit_code"] == 7, out
    assert "1000" in out["text"] and "www" in out["text"] and "opt" not in out["text"], out
    # the published port serves HTTP to a host-side client
    pfs = env.call("GET", f"/v1/vms/{ctr['vm_id']}/port-forwards").json()["items"]
    assert len(pfs) == 1 and pfs[0]["guest_port"] == 8080
    body = ""
    for _ in range(40):
        try:
            body = httpx.get(f"http://127.0.0.1:{pfs[0]['host_port']}/index.html", timeout=10).text
            break
        except httpx.HTTPError:
            time.sleep(0.5)
    assert body == "hello from the container image\n"
    # stop delivers SIGTERM to the entrypoint
    r = env.call("POST", f"/v1/containers/{ctr['id']}/stop", params={"timeout": 10})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "stopped" and r.json()["exit_code"] == 143, r.json()
    assert "stdout got SIGTERM" in env.logs(ctr["id"])
    # events
    ev = env.call("GET", "/v1/events", params={"resource_type": "container"}).json()
    types = {e["type"] for e in ev.get("items", [])}
    assert {"container.created", "container.started", "container.stopped"} <= types, types
    _delete(env, ctr)


def _shell(env: Env, ctr_id: str, keys: bytes) -> dict[str, Any]:
    """Type ``keys`` into the container's terminal; its output and exit code."""
    r = env.call("POST", f"/v1/containers/{ctr_id}/shell/ticket")
    assert r.status_code == 201, r.text
    url = env.srv.url.replace("http://", "ws://") + r.json()["ws_path"]
    text, code = b"", None
    with ws_connect(f"{url}?ticket={r.json()['ticket']}&cols=100&rows=30") as ws:
        ws.send(keys)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = ws.recv(timeout=60)
            if isinstance(msg, bytes):
                text += msg
            elif json.loads(msg).get("type") == "exit":
                code = json.loads(msg).get("exit_code")
                break
    return {"text": text.decode("utf-8", "replace"), "exit_code": code}


def test_on_failure_restarts_with_backoff(env: Env) -> None:
    # runs after the web container is gone: the volume it wrote is free again (read-only here)
    script = (
        "cat /srv/data/f; (echo x > /srv/data/x) 2>/dev/null && echo rw || echo ro-refused;"
        " echo crash; exit 3"
    )
    r = env.call("POST", "/v1/containers", json={
        "name": "crasher", "image": "demo", "command": ["/bin/sh", "-c", script],
        "restart_policy": "on-failure:2", "memory_mib": 256,
        "volumes": [{"volume": "data", "mount_path": "/srv/data", "read_only": True}]})  # fmt: skip
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    seen: list[tuple[int, float]] = []
    deadline = time.monotonic() + 240
    c: dict[str, Any] = {}
    while time.monotonic() < deadline:
        c = env.call("GET", f"/v1/containers/{cid}").json()
        if not seen or seen[-1][0] != c["restart_count"]:
            seen.append((c["restart_count"], time.monotonic()))
        if c["restart_count"] == 2 and c["state"] == "exited":
            break
        time.sleep(0.25)
    assert c["state"] == "exited" and c["exit_code"] == 3 and c["restart_count"] == 2, (c, seen)
    counts = [n for n, _ in seen]
    assert counts == sorted(counts) and counts[-1] == 2, seen
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(seen)]
    if len(gaps) >= 2:
        assert gaps[-1] >= 1.5, gaps  # the second restart waited ~2 s, the first ~1 s
    assert env.logs(cid).count("stdout crash") == 3
    assert "stdout persisted" in env.logs(cid) and "stdout ro-refused" in env.logs(cid)
    _delete(env, c)


def _delete(env: Env, ctr: dict[str, Any]) -> None:
    r = env.call("DELETE", f"/v1/containers/{ctr['id']}")
    assert r.status_code in (202, 204), r.text
    if r.status_code == 202:
        assert wait_op(env.srv, env.h, r.json())["status"] == "succeeded"
    assert env.call("GET", f"/v1/containers/{ctr['id']}").status_code == 404
    assert env.call("GET", f"/v1/vms/{ctr['vm_id']}").status_code == 404
    assert not (env.srv.state_dir / "containers" / ctr["id"]).exists()
    assert not (env.srv.state_dir / "vms" / ctr["vm_id"]).exists()
    assert not [p for p in qemu_pids_under(env.srv.state_dir) if ctr["vm_id"] in _cmd(p)]


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
