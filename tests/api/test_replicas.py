"""Manager replicas on one PostgreSQL: a concurrent start on an empty database, and the
failover of every background loop after ``kill -9`` of its leader (real ``nexus-manager
serve`` processes). PostgreSQL only (NEXUS_TEST_DATABASE_URL): SQLite has one process."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.api.conftest import PG_URL
from tests.support.server import BIN, ROOT, free_port

pytestmark = pytest.mark.skipif(not PG_URL, reason="replicas need PostgreSQL")

PASSWORD = "replica-admin-pass-1"
SECRET = "replica-test-secret-" + "k" * 40  # both replicas sign and check the same JWTs
ROUNDS = 20


def _spawn(
    state_dir: Path, url: str, extra: dict[str, str] | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update(
        {
            "NEXUS_STATE_DIR": str(state_dir),
            "NEXUS_CACHE_DIR": str(state_dir / "cache"),
            "NEXUS_DATABASE_URL": url,
            "NEXUS_SECRET_KEY": SECRET,
            "NEXUS_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
            "NEXUS_EMBEDDED_AGENT": "false",
            "NEXUS_LOG_LEVEL": "warning",
            **(extra or {}),
        }
    )
    log = (state_dir / "manager.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "nexus-manager"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    return f"http://127.0.0.1:{port}", proc


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"replica exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"replica not ready in {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


async def _admin_sql(*statements: str) -> None:
    engine = create_async_engine(
        make_url(PG_URL).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        async with engine.connect() as conn:
            for sql in statements:
                await conn.execute(text(sql))
    finally:
        await engine.dispose()


def _login(url: str) -> dict[str, str]:
    r = httpx.post(f"{url}/v1/auth/login", json={"username": "admin", "password": PASSWORD})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_two_replicas_start_at_the_same_instant_on_an_empty_database(tmp_path: Path) -> None:
    """Twenty times: a new empty database, two replicas started at the same instant (forked
    together, each running the manager's whole start-up); both come up, at head, with one
    admin: migrations, the bootstrap admin and the default rows run under an advisory lock,
    one replica after the other. (A real ``serve`` pair is started by the failover test.)"""
    names = [f"nexus_replicas_{os.getpid()}_{i}_{secrets.token_hex(3)}" for i in range(ROUNDS)]
    asyncio.run(_admin_sql(*(f'CREATE DATABASE "{n}"' for n in names)))
    urls = [make_url(PG_URL).set(database=n).render_as_string(hide_password=False) for n in names]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    try:
        out = subprocess.run(
            [str(BIN / "python"), "-m", "tests.support.replica_starter", str(tmp_path), *urls],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        asyncio.run(_admin_sql(*(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in names)))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == [], result["errors"][:3]
    assert result["rounds"] == [[0, 0]] * ROUNDS


def _leaders(url: str, h: dict[str, str]) -> dict[str, dict[str, object]]:
    r = httpx.get(f"{url}/v1/system/leaders", headers=h, timeout=5)
    r.raise_for_status()
    return {item["loop"]: item for item in r.json()["items"]}


def test_every_loop_fails_over_within_15s_after_kill_9(tmp_path: Path, database_url: str) -> None:
    """Kill -9 the replica leading the loops: the survivor takes every loop over within
    15 s (default lease settings) and answers every request meanwhile."""
    a_url, a = _spawn(tmp_path / "a", database_url)
    try:
        _wait_ready(a_url, a, tmp_path / "a" / "manager.log")
        h = _login(a_url)
        # the first replica leads every loop before the second starts
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            leaders = _leaders(a_url, h)
            if len(leaders) >= 5 and all(v["this_replica"] for v in leaders.values()):
                break
            time.sleep(0.2)
        loops = set(leaders)
        assert {"reconciler", "guest-metrics", "policies"} <= loops, leaders
        b_url, b = _spawn(tmp_path / "b", database_url)
        try:
            _wait_ready(b_url, b, tmp_path / "b" / "manager.log")
            hb = _login(b_url)
            failed: list[str] = []
            stop = threading.Event()

            def traffic() -> None:  # the survivor answers every request during the failover
                with httpx.Client(base_url=b_url, headers=hb, timeout=10) as c:
                    while not stop.is_set():
                        for path in ("/v1/vms", "/v1/hosts", "/health/ready"):
                            try:
                                r = c.get(path)
                                if r.status_code != 200:
                                    failed.append(f"{path}: {r.status_code}")
                            except httpx.HTTPError as exc:
                                failed.append(f"{path}: {exc!r}")
                        time.sleep(0.05)

            t = threading.Thread(target=traffic)
            t.start()
            try:
                a.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                a.wait(10)
                taken: dict[str, float] = {}
                while time.monotonic() - killed < 20 and len(taken) < len(loops):
                    for loop, item in _leaders(b_url, hb).items():
                        if loop in loops and item["this_replica"] and item["live"]:
                            taken.setdefault(loop, time.monotonic() - killed)
                    time.sleep(0.2)
            finally:
                stop.set()
                t.join(20)
            assert set(taken) == loops, (loops - set(taken), taken)
            assert max(taken.values()) <= 15.0, taken
            assert not failed, failed[:10]
            # the leader is a metric too
            text_ = httpx.get(f"{b_url}/metrics", headers=hb).text
            assert 'nexus_loop_leader{loop="reconciler"} 1.0' in text_
        finally:
            _stop(b)
    finally:
        _stop(a)
