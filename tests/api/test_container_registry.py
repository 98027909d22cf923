"""Pulling a container image from a private registry: Debian's docker-registry on loopback
with htpasswd (bcrypt) auth and the test image pushed to it, pulled through a real manager
(no guest is booted). The right credentials pull; wrong or missing ones fail the operation
with a clear reason; the password never shows in an API response, an operation, an audit
row, an event, the manager's log (at debug level) or a process command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.oci import build_oci_layout
from tests.support.server import LiveServer, free_port, login, start_manager, wait_op

pytestmark = pytest.mark.skipif(
    shutil.which("docker-registry") is None or shutil.which("skopeo") is None,
    reason="needs Debian's docker-registry and skopeo (scripts/install-deps.sh --test)",
)
USER = "ci-robot"
PASSWORD = "Priv-Reg-pw-7f3a91c2e5"  # unique: grep-able wherever it might leak
ADMIN_PW = "registry-admin-pw"


def _bcrypt(password: str) -> str:
    """An htpasswd bcrypt hash: ``htpasswd`` (apache2-utils) if installed, else libxcrypt
    through Python's ``crypt`` (Debian 12's libc hashes ``$2b$``)."""
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", "-C", "5", USER, password],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return out.strip().split(":", 1)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            pytest.skip("no htpasswd and no crypt module to make a bcrypt hash")
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("this libc cannot make bcrypt hashes")
    return hashed


def _authfile(d: Path, registry: str) -> Path:
    import base64

    path = d / "push-auth.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with os.fdopen(fd, "w") as fh:
        json.dump({"auths": {registry: {"auth": auth}}}, fh)
    return path


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A password-protected registry on 127.0.0.1 holding demo:1."""
    d = tmp_path_factory.mktemp("privreg")
    os.chmod(d, 0o700)
    port = free_port()
    htpasswd = d / "htpasswd"
    htpasswd.write_text(f"{USER}:{_bcrypt(PASSWORD)}\n")
    os.chmod(htpasswd, 0o600)
    cfg = d / "config.yml"
    cfg.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {d / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: nexus-test\n    path: {htpasswd}\n"
    )
    log = (d / "registry.log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=log)
    registry = f"127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                r = httpx.get(f"http://{registry}/v2/", timeout=1)
                if r.status_code == 401:  # up, and it wants credentials
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        build_oci_layout(d / "layout")
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
             f"--dest-authfile={_authfile(d, registry)}",
             f"oci:{d / 'layout'}:1", f"docker://{registry}/demo:1"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield registry
    finally:
        proc.terminate()
        proc.wait(10)


class CmdlineWatch(threading.Thread):
    """Samples every process's command line while it runs; remembers any holding ``needle``."""

    def __init__(self, needle: str) -> None:
        super().__init__(daemon=True)
        self.needle = needle.encode()
        self.hits: list[str] = []
        self.seen_skopeo = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                self.seen_skopeo = self.seen_skopeo or cmd.startswith(b"skopeo\0copy")
                if self.needle in cmd:
                    self.hits.append(cmd.replace(b"\0", b" ").decode("utf-8", "replace"))
            time.sleep(0.005)


@pytest.fixture
def manager(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    # ``database_url``: a fresh database (PostgreSQL: truncated), so no row sealed by another
    # test's manager (another sealing key) is left for this one to open
    env = {"NEXUS_LOG_LEVEL": "debug", "NEXUS_DATABASE_URL": database_url}
    srv = start_manager(tmp_path / "state", admin_password=ADMIN_PW, env=env)
    try:
        yield srv
    finally:
        srv.stop()


def _pull(srv: LiveServer, h: dict[str, str], body: dict[str, Any]) -> tuple[Any, str]:
    r = httpx.post(f"{srv.url}/v1/container-images", json=body, headers=h, timeout=30)
    assert r.status_code == 202, r.text
    assert PASSWORD not in r.text
    return wait_op(srv, h, r.json(), timeout=300), r.text


def test_private_registry_pull(manager: LiveServer, private_registry: str) -> None:
    srv, h = manager, login(manager, ADMIN_PW)
    ref = f"{private_registry}/demo:1"
    seen: list[str] = []
    # no credentials, then a wrong password: the operation fails and says why
    op, text = _pull(srv, h, {"reference": ref, "name": "anon", "tls_verify": False})
    seen.append(text + json.dumps(op))
    assert op["status"] == "failed", op
    assert "refused an anonymous pull" in op["error"] and "unauthorized" in op["error"], op
    op, text = _pull(srv, h, {"reference": ref, "name": "wrong", "tls_verify": False,
                              "username": USER, "password": "not-" + PASSWORD[4:]})  # fmt: skip
    seen.append(text + json.dumps(op))
    assert op["status"] == "failed", op
    assert "refused the credentials given" in op["error"], op
    r = httpx.get(f"{srv.url}/v1/operations/{op['id']}", headers=h)
    assert r.headers["content-type"].startswith("application/json") and "failed" in r.text
    # the right ones pull, while every process's command line is watched
    watch = CmdlineWatch(PASSWORD)
    watch.start()
    try:
        op, text = _pull(srv, h, {"reference": ref, "name": "priv", "tls_verify": False,
                                  "username": USER, "password": PASSWORD})  # fmt: skip
    finally:
        watch.done.set()
        watch.join(5)
    seen.append(text + json.dumps(op))
    assert op["status"] == "succeeded", op
    assert watch.seen_skopeo and watch.hits == [], watch.hits
    img = httpx.get(f"{srv.url}/v1/container-images/{op['result']['image_id']}", headers=h)
    assert img.status_code == 200 and img.json()["config"]["entrypoint"] == ["/app/run.sh"]
    assert img.json()["has_registry_password"] is True
    assert img.json()["registry_username"] == USER
    # a clear problem+json for the API errors around it: the name is taken now
    r = httpx.post(f"{srv.url}/v1/container-images", headers=h,
                   json={"reference": ref, "name": "priv", "username": USER,
                         "password": PASSWORD, "tls_verify": False})  # fmt: skip
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert PASSWORD not in r.text
    # nowhere to be read back: responses, operations, audit, events, the manager's log
    paths = ["/v1/container-images", f"/v1/container-images/{op['result']['image_id']}",
             "/v1/operations?limit=100", "/v1/audit?limit=500", "/v1/events?limit=500"]  # fmt: skip
    for path in paths:
        r = httpx.get(f"{srv.url}{path}", headers=h, timeout=30)
        assert r.status_code == 200, (path, r.text)
        seen.append(r.text)
    assert all(PASSWORD not in t and PASSWORD[4:] not in t for t in seen)
    log = (srv.state_dir / "manager.log").read_text(errors="replace")
    assert "/v1/container-images" in log  # (debug logs the requests)
    assert PASSWORD not in log and PASSWORD[4:] not in log
    # the state directory holds no readable copy either (the auth file was temporary)
    for p in srv.state_dir.rglob("*"):
        if p.is_file() and p.suffix not in (".ext4", ".db", ".db-wal", ".db-shm"):
            assert PASSWORD.encode() not in p.read_bytes(), p
