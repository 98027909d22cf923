"""fleet_hosts_1000: a thousand simulated agents on one manager (loopback only, bounded).

The manager is a real ``nexus-manager serve`` (no embedded agent). The agents are simulated:

* one small ASGI app (``agent_app``, its own process) answers the agent API for every
  host at ``http://127.0.0.1:<port>/a/<n>`` — ``GET /v1/vms`` (two running VMs) and
  ``GET /v1/vms/{id}/metrics`` — so the reconciler and the metrics sampler do their real work;
* this process registers ``--hosts`` hosts through the API (a join token each), puts two
  running VM rows per host in the database, then sends every host's heartbeat every 10 s
  (realistic facts; uptime, load and memory change each time), offsets spread over 10 s,
  for ``--seconds``, while reading ``GET /v1/vms?limit=50`` as an admin 5 times a second
  and the manager's RSS once a second.

Reported: heartbeat p50/p99 and failures (non-204 or no answer within 10 s), ``GET /v1/vms``
p99, manager RSS (max) and CPU. ``--src`` runs the manager from another source tree (to
measure an older commit with the same simulator). Run alone:
``python -m bench.fleet --db pg,sqlite``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PASSWORD = "fleet-bench-admin-1"
HEARTBEAT_S = 10.0
FACTS: dict[str, Any] = {
    "hostname": "sim",
    "driver": "qemu",
    "accel": "kvm",
    "vcpus": 64,
    "memory_mib": 262144,
    "disk_free_mib": 900000,
    "disk_total_mib": 1000000,
    "version": "sim",
    "vm_count": 2,
}


def vm_ids(n: int) -> list[str]:
    """The two VMs of simulated host ``n`` (the same ids in the database and the agent)."""
    return [f"vm_fleet{n:05d}a", f"vm_fleet{n:05d}b"]


# --- the simulated agents (served by `uvicorn bench.fleet:agent_app`) ----------------------


async def agent_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The agent API of every simulated host: ``/a/<n>/v1/vms[/<id>/metrics]`` and
    ``/a/<n>/v1/metrics/vms``."""
    if scope["type"] != "http":
        return
    parts = scope["path"].strip("/").split("/")
    body: Any = None
    if len(parts) >= 4 and parts[0] == "a" and parts[2] == "v1":
        n = int(parts[1])
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def sample(vm_id: str) -> dict[str, Any]:
            return {
                "vm_id": vm_id,
                "sampled_at": now,
                "state": "running",
                "host": {"vmm_pid": 1000 + n, "cpu_time_s": 12.5, "rss_bytes": 200 << 20},
            }

        if parts[3:] == ["vms"]:
            body = [
                {"id": v, "state": "running", "pid": 1000 + n, "guest_ready": True}
                for v in vm_ids(n)
            ]
        elif parts[3:] == ["metrics", "vms"]:
            body = [sample(v) for v in vm_ids(n)]
        elif len(parts) == 6 and parts[3] == "vms" and parts[5] == "metrics":
            body = sample(parts[4])
    status = 200 if body is not None else 404
    payload = json.dumps(body if body is not None else {"type": "not-found"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


# --- the bench ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited:\n{log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url}: not up in {timeout}s")


async def seed_vms(db_url: str, owner_id: str, host_ids: dict[int, str]) -> None:
    """Two running VM rows per host, straight into the database."""
    import nexus.manager.models  # noqa: F401  (every table: the foreign keys resolve)
    from nexus.core.db import Database
    from nexus.manager.features.images.models import Image
    from nexus.manager.features.vms.models import Vm

    db = Database(db_url)
    try:
        async with db.session() as s:
            s.add(
                Image(
                    id="img_fleet",
                    name="fleet",
                    source="bench",
                    public=True,
                    kernel_sha256="k",
                    rootfs_sha256="r",
                    path="/nonexistent",
                    created_by_user_id=owner_id,
                )
            )
            await s.flush()
            for n, host_id in host_ids.items():
                for vm_id in vm_ids(n):
                    s.add(
                        Vm(
                            id=vm_id,
                            name=vm_id.removeprefix("vm_"),
                            vcpus=1,
                            memory_mib=256,
                            image_id="img_fleet",
                            host_id=host_id,
                            state="running",
                            desired_state="running",
                            labels={},
                            created_by_user_id=owner_id,
                        )
                    )
    finally:
        await db.dispose()


async def _simulate(
    url: str, agents: str, pid: int, hosts: int, seconds: float, db_url: str
) -> dict[str, Any]:
    # The simulated agents' connections are spread over several clients (each agent has its
    # own connection, as real agents do): one httpx pool with a thousand connections costs
    # O(connections) per request and would make the simulator, not the manager, the
    # bottleneck. The API reader has a client of its own.
    shard = 50
    limits = httpx.Limits(max_connections=shard + 5, max_keepalive_connections=shard + 5)
    pools = [
        httpx.AsyncClient(base_url=url, timeout=30, limits=limits)
        for _ in range((hosts + shard - 1) // shard)
    ]
    reader_c = httpx.AsyncClient(base_url=url, timeout=30)
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post("/v1/auth/login", json={"username": "admin", "password": PASSWORD})
        r.raise_for_status()
        admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
        me = (await c.get("/v1/auth/me", headers=admin)).json()["user"]["id"]
        sem = asyncio.Semaphore(16)
        creds: dict[int, tuple[str, str]] = {}

        async def register(n: int) -> None:
            async with sem:
                tok = (await c.post("/v1/hosts/join-tokens", headers=admin)).json()["token"]
                r = await c.post(
                    "/v1/hosts/register",
                    json={
                        "join_token": tok,
                        "name": f"sim-{n:05d}",
                        "agent_url": f"{agents}/a/{n}",
                        "facts": {**FACTS, "hostname": f"sim-{n:05d}"},
                    },
                )
                r.raise_for_status()
                creds[n] = (r.json()["host_id"], r.json()["host_token"])

        t0 = time.monotonic()
        await asyncio.gather(*(register(n) for n in range(hosts)))
        registered_s = time.monotonic() - t0
        await seed_vms(db_url, me, {n: hid for n, (hid, _) in creds.items()})

        hb: list[float] = []
        failures: list[str] = []
        api: list[float] = []
        rss: list[float] = []
        end = time.monotonic() + seconds
        cpu0 = cpu_s(pid)

        async def agent(n: int) -> None:
            host_id, token = creds[n]
            auth = {"Authorization": f"Bearer {token}"}
            vms = [{"id": v, "state": "running", "guest_ready": True} for v in vm_ids(n)]
            await asyncio.sleep(random.uniform(0, HEARTBEAT_S))
            uptime = 86400.0 + n
            while time.monotonic() < end:
                began = time.monotonic()
                facts = {
                    **FACTS,
                    "hostname": f"sim-{n:05d}",
                    "uptime_s": uptime + began,
                    "load_avg": [round(random.uniform(0, 8), 2) for _ in range(3)],
                    "mem_available_mib": random.randint(100000, 200000),
                    "vmm_rss_mib": 400,
                }
                try:
                    r = await pools[n // shard].post(
                        f"/v1/hosts/{host_id}/heartbeat",
                        json={"facts": facts, "vms": vms},
                        headers=auth,
                        timeout=10,
                    )
                    if r.status_code != 204:
                        failures.append(f"{r.status_code}")
                    else:
                        hb.append(time.monotonic() - began)
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                await asyncio.sleep(max(0.0, began + HEARTBEAT_S - time.monotonic()))

        async def reader() -> None:
            while time.monotonic() < end:
                began = time.monotonic()
                try:
                    r = await reader_c.get("/v1/vms?limit=50", headers=admin, timeout=10)
                    if r.status_code == 200:
                        api.append(time.monotonic() - began)
                except httpx.HTTPError:
                    api.append(10.0)
                await asyncio.sleep(max(0.0, began + 0.2 - time.monotonic()))

        async def memory() -> None:
            while time.monotonic() < end:
                rss.append(rss_mib(pid))
                await asyncio.sleep(1)

        sim0 = cpu_s(os.getpid())
        await asyncio.gather(*(agent(n) for n in range(hosts)), reader(), memory())
        cpu_pct = 100 * (cpu_s(pid) - cpu0) / seconds
        sim_pct = 100 * (cpu_s(os.getpid()) - sim0) / seconds
        for p in [*pools, reader_c]:
            await p.aclose()
        try:  # the first page of hosts (default limit), as a dashboard reads it
            page_kib = round(len((await c.get("/v1/hosts", headers=admin)).content) / 1024, 1)
        except httpx.HTTPError:
            page_kib = float("nan")
        return {
            "hosts": hosts,
            "seconds": seconds,
            "register_s": round(registered_s, 1),
            "heartbeats": len(hb),
            "hb_failures": len(failures),
            "hb_failure_kinds": sorted(set(failures))[:5],
            "hb_p50_ms": round(1000 * pct(hb, 0.5), 1),
            "hb_p99_ms": round(1000 * pct(hb, 0.99), 1),
            "vms_p99_ms": round(1000 * pct(api, 0.99), 1),
            "vms_requests": len(api),
            "rss_mib": round(max(rss), 1) if rss else float("nan"),
            "cpu_percent": round(cpu_pct, 1),
            "sim_cpu_percent": round(sim_pct, 1),
            "hosts_page_kib": page_kib,
        }


def pg_server_url() -> str | None:
    """The test PostgreSQL (``scripts/test-postgres.sh``), or None."""
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "test-postgres.sh")],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return out.stdout.strip().splitlines()[-1] or None


def _pg_admin(server: str, sql: str) -> None:
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> None:
        eng = create_async_engine(
            make_url(server).set(database="postgres"), isolation_level="AUTOCOMMIT"
        )
        try:
            async with eng.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await eng.dispose()

    asyncio.run(run())


def run_one(
    db: str, hosts: int, seconds: float, src: Path | None, profile: Path | None = None
) -> dict[str, Any]:
    """One measured run on ``db`` (``pg`` or ``sqlite``): start, simulate, stop, clean up."""
    work = Path(tempfile.mkdtemp(prefix="nexus-fleet-", dir="/var/tmp"))
    state = work / "state"
    state.mkdir(mode=0o700)
    server = None
    dbname = ""
    if db == "pg":
        server = pg_server_url()
        if server is None:
            return {"error": "no PostgreSQL (scripts/test-postgres.sh failed)"}
        from sqlalchemy import make_url

        dbname = f"nexus_fleet_{secrets.token_hex(4)}"
        _pg_admin(server, f'CREATE DATABASE "{dbname}"')
        db_url = make_url(server).set(database=dbname).render_as_string(hide_password=False)
    else:
        db_url = f"sqlite+aiosqlite:///{state / 'nexus.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update(
        {
            "NEXUS_STATE_DIR": str(state),
            "NEXUS_CACHE_DIR": str(work / "cache"),
            "NEXUS_DATABASE_URL": db_url,
            "NEXUS_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
            "NEXUS_EMBEDDED_AGENT": "false",
            "NEXUS_ALLOW_LOOPBACK_AGENTS": "true",
            "NEXUS_RATE_LIMITS_ENABLED": "false",
            "NEXUS_LOG_LEVEL": "warning",
        }
    )
    if src is not None:
        env["PYTHONPATH"] = str(src)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        aport, mport = free_port(), free_port()
        alog = (work / "agents.log").open("wb")
        agents = subprocess.Popen(
            [str(BIN / "python"), "-m", "uvicorn", "bench.fleet:agent_app", "--port",
             str(aport), "--log-level", "warning", "--no-access-log", "--backlog", "4096"],
            cwd=ROOT, stdout=alog, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(agents)
        mlog_path = work / "manager.log"
        cmd = [str(BIN / "nexus-manager"), "serve", "--host", "127.0.0.1", "--port", str(mport)]
        if profile:  # pyinstrument, as the api_ratio profile (bench/profiled_manager.py)
            cmd = [str(BIN / "python"), "-m", "bench.profiled_manager", str(profile), str(mport)]
        manager = subprocess.Popen(
            cmd,
            cwd=ROOT, env=env, stdout=mlog_path.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(manager)
        url = f"http://127.0.0.1:{mport}"
        wait_http(f"http://127.0.0.1:{aport}/", agents, work / "agents.log")
        wait_http(f"{url}/health/live", manager, mlog_path)
        res = asyncio.run(
            _simulate(url, f"http://127.0.0.1:{aport}", manager.pid, hosts, seconds, db_url)
        )
        res["db"] = db
        return res
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if server and dbname:
            _pg_admin(server, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        subprocess.run(["rm", "-rf", str(work)], check=False)


GOALS = {"hb_failures": 0, "hb_p99_ms": 500, "vms_p99_ms": 100, "rss_mib": 400}


def bench_fleet(hosts: int = 1000, seconds: float = 60, dbs: str = "pg,sqlite") -> dict[str, Any]:
    """The ``fleet_hosts_1000`` figures for ``make bench`` (``fleet_<db>_<key>``)."""
    out: dict[str, Any] = {}
    for db in dbs.split(","):
        res = run_one(db, hosts, seconds, None)
        out[f"fleet_{db}"] = res
    return out


def line(res: dict[str, Any]) -> str:
    """``BENCH fleet_hosts_1000 db=... key=value ...``."""
    keys = ("hb_p50_ms", "hb_p99_ms", "hb_failures", "heartbeats", "vms_p99_ms", "rss_mib",
            "cpu_percent", "sim_cpu_percent", "hosts_page_kib")  # fmt: skip
    if "error" in res:
        return f"BENCH fleet_hosts_{res.get('hosts', '')} db={res.get('db')} error={res['error']}"
    return f"BENCH fleet_hosts_{res['hosts']} db={res['db']} " + " ".join(
        f"{k}={res[k]}" for k in keys
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--db", default="pg,sqlite", help="pg, sqlite or both (comma-separated)")
    ap.add_argument("--src", type=Path, help="run the manager from this source tree")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--profile", type=Path, help="profile the manager: OUT_PREFIX.{txt,json}")
    args = ap.parse_args(argv)

    def on_term(signum: int, _frame: Any) -> None:  # clean up (run_one's finally) on SIGTERM
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    results = []
    for db in args.db.split(","):
        res = run_one(db, args.hosts, args.seconds, args.src, args.profile)
        res.setdefault("db", db)
        res.setdefault("hosts", args.hosts)
        print(line(res), flush=True)
        results.append(res)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
