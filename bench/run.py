"""``make bench``: Nexus against the raw VMM and a bare FastAPI app, as ratios.

Every figure is a ratio measured in one run against a baseline on the same machine, with
the two sides interleaved, because absolute times on a shared machine move. See
``bench/README.md`` for what each key means and the goals.

    python -m bench.run [--runs 5] [--quick]
        [--only boot,restore,density,api,functions,container,fleet]

Prints a table and a final ``key=value`` summary line, and writes
``bench/results/bench-<timestamp>.json`` (and ``latest.json``) with the machine's facts.
Everything it starts (managers, VMs, raw QEMU processes, load generators) is stopped on
exit, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench import fleet
from bench import functions as fn_bench
from nexus.agent.storage.disks import clone_disk
from nexus.agent.vmm.base import MachineSpec
from nexus.agent.vmm.qemu import QemuDriver

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
READY = b"NEXUS-GUEST-READY"
PASSWORD = "bench-admin-" + secrets.token_hex(6)
GOALS = {
    "boot_ratio": ("<=", 1.05),
    "restore_ratio": ("<=", 0.2),
    "agent_mib_per_vm": ("<=", 1.0),
    "api_ratio": (">=", 0.5),
    "api_p99_ms": ("<=", 50.0),
    **fn_bench.GOALS,
    "container_ratio": ("<=", 1.15),
}


def log(msg: str) -> None:
    """Progress on stderr (the table and summary go to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median(xs: list[float]) -> float:
    """Median (NaN for no data)."""
    return statistics.median(xs) if xs else float("nan")


# --- process bookkeeping ----------------------------------------------------------------


class Reaper:
    """Everything the bench starts, so that it can all be stopped on any exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dirs: list[Path] = []  # qemu processes whose argv mentions these get killed
        # bridges/taps the bench's manager makes (containers join the default network) stay
        # after it stops, and a second bridge on the same subnet breaks the next run's routes
        self.links_before = nexus_links()

    def track(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Remember ``proc`` for :meth:`reap`."""
        self.procs.append(proc)
        return proc

    def reap(self) -> None:
        """Terminate tracked processes (TERM, then KILL) and QEMUs under tracked dirs."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        for d in self.dirs:
            for pid in qemu_pids_under(d):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for name in sorted(nexus_links() - self.links_before, reverse=True):  # taps first
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def nexus_links() -> set[str]:
    """Names of the Nexus bridges (nxb-) and taps (nxt-) on this host."""
    try:
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    except OSError:
        return set()
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}
    return {n for n in names if n.startswith(("nxb-", "nxt-"))}


REAPER = Reaper()


def qemu_pids_under(path: Path) -> list[int]:
    """Pids of qemu-system processes whose command line mentions ``path``."""
    out = []
    needle = str(path).encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd.split(b"\0")[0] and needle in cmd:
            out.append(int(d.name))
    return out


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- machine facts ----------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    """CPU, cores, accel, QEMU version, kernel, Python, load: recorded with every result."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        qemu = subprocess.run(
            ["qemu-system-x86_64", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        qemu = "not found"
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    driver = QemuDriver()
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "accel": driver.accel,
        "accel_note": driver.accel_warning,
        "qemu_version": qemu,
        "host_kernel": platform.release(),
        "python": platform.python_version(),
        "memory_total_mib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20,
        "loadavg_at_start": os.getloadavg(),
        "git_rev": rev or None,
    }


# --- the manager under test -------------------------------------------------------------


@dataclass
class Manager:
    """A real ``nexus-manager serve`` subprocess (optionally profiled)."""

    state_dir: Path
    embedded_agent: bool = True
    profile_out: Path | None = None
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> Manager:
        """Start and wait until it serves (and, with the embedded agent, has a healthy host)."""
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        for key in (
            "NEXUS_CACHE_DIR",
            "NEXUS_DRIVER",
            "NEXUS_ACCEL",
            "NEXUS_RECONCILE_INTERVAL_S",
            "NEXUS_METRICS_INTERVAL_S",
            "NEXUS_AUTH_CACHE_TTL_S",
            "NEXUS_LIST_CACHE_TTL_S",
        ):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(
            {
                "NEXUS_STATE_DIR": str(self.state_dir),
                "NEXUS_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
                "NEXUS_EMBEDDED_AGENT": "true" if self.embedded_agent else "false",
                "NEXUS_AGENT_PORT": str(free_port()),
                "NEXUS_RATE_LIMITS_ENABLED": "false",
                "NEXUS_LOG_LEVEL": "warning",
                "BENCH_VCPU_OVERCOMMIT": "8",
                **self.env_extra,
            }
        )
        # same create_app + uvicorn.run as `nexus-manager serve` (see profiled_manager.py)
        out = str(self.profile_out) if self.profile_out is not None else "-"
        argv = [sys.executable, "-m", "bench.profiled_manager", out, str(self.port)]
        logf = (self.state_dir / "manager.log").open("ab")
        self.proc = REAPER.track(
            subprocess.Popen(argv, env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
        )
        probe = "/health/ready" if self.embedded_agent else "/health/live"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"manager exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + probe, timeout=2).status_code == 200:
                    self.login()
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"manager not ready in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.state_dir / "manager.log").read_text(errors="replace")[-3000:]
        return ""

    def login(self) -> None:
        r = httpx.post(
            self.url + "/v1/auth/login",
            json={"username": "admin", "password": PASSWORD},
            timeout=30,
        )
        r.raise_for_status()
        self.token = r.json()["access_token"]

    def client(self, timeout: float = 600) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the manager (its VMs keep running: kill them with :func:`kill_vms`)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def kill_vms(state_dir: Path) -> None:
    """SIGKILL every QEMU started under ``state_dir``."""
    for pid in qemu_pids_under(state_dir):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def wait_op(c: httpx.Client, op: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Block on an operation and return it (raise unless it succeeded)."""
    r = c.get(f"/v1/operations/{op['id']}", params={"wait": "true", "timeout": timeout})
    r.raise_for_status()
    done = r.json()
    if done.get("status") != "succeeded":
        raise RuntimeError(f"operation {op['id']} {done.get('status')}: {done}")
    return dict(done)


def ensure_image(m: Manager, name: str) -> tuple[str, Path]:
    """Build (cached) or reuse image ``name`` through the API; return its id and file dir."""
    with m.client() as c:
        r = c.post("/v1/images/build", json={"name": name})
        if r.status_code == 202:
            image_id = str(wait_op(c, r.json())["result"]["image_id"])
        elif r.status_code == 409:
            items = c.get("/v1/images").json()
            items = items["items"] if isinstance(items, dict) else items
            image_id = next(i["id"] for i in items if i["name"] == name)
        else:
            raise RuntimeError(f"image build {name}: {r.status_code} {r.text}")
        img = c.get(f"/v1/images/{image_id}").json()
    d = m.state_dir / "images" / image_id
    if not (d / "vmlinuz").exists():
        for man in (m.state_dir / "images").rglob("manifest.json"):
            with contextlib.suppress(ValueError, OSError):
                if json.loads(man.read_text()).get("rootfs_sha256") == img["rootfs_sha256"]:
                    d = man.parent
                    break
    if not (d / "vmlinuz").exists():
        raise RuntimeError(f"cannot find the files of image {image_id} under {m.state_dir}")
    return image_id, d


def api_create(c: httpx.Client, name: str, image: str, memory: int) -> tuple[float, dict]:
    """``POST /v1/vms?wait=true`` (no NIC, like the raw baseline); seconds and the VM."""
    t0 = time.monotonic()
    r = c.post(
        "/v1/vms",
        params={"wait": "true", "timeout": 600},
        json={"name": name, "image": image, "memory_mib": memory, "networks": []},
    )
    dt = time.monotonic() - t0
    if r.status_code != 200 or r.json().get("state") != "running":
        raise RuntimeError(f"create {name}: {r.status_code} {r.text[:2000]}")
    return dt, r.json()


def api_delete(c: httpx.Client, vm_id: str) -> None:
    r = c.delete(f"/v1/vms/{vm_id}", params={"wait": "true", "timeout": 300})
    if r.status_code not in (200, 202, 204, 404):
        raise RuntimeError(f"delete {vm_id}: {r.status_code} {r.text[:500]}")


def delete_all(c: httpx.Client, prefix: str) -> None:
    """Delete every VM whose name starts with ``prefix`` (cleanup after a failure)."""
    with contextlib.suppress(httpx.HTTPError, RuntimeError, KeyError):
        for vm in c.get("/v1/vms", params={"limit": 500}).json()["items"]:
            if vm["name"].startswith(prefix):
                api_delete(c, vm["id"])


# --- the raw baseline ---------------------------------------------------------------------


class RawVm:
    """``qemu-system-x86_64`` spawned directly with the argv the agent's driver builds: same
    kernel, initrd, memory, accel and kernel command line; its own copy of the rootfs
    (made before the clock starts)."""

    def __init__(self, work: Path, name: str, image_dir: Path, memory: int) -> None:
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        clone_disk(image_dir / "rootfs.ext4", self.dir / "disk.img")
        spec = MachineSpec(
            vm_id=name,
            vcpus=1,
            memory_mib=memory,
            kernel=image_dir / "vmlinuz",
            initrd=image_dir / "initrd.img" if (image_dir / "initrd.img").exists() else None,
            root_disk=self.dir / "disk.img",
            kernel_args=f"nexus.hostname={name}",
        )
        self.argv = QemuDriver().build_argv(spec, self.dir)
        self.proc: subprocess.Popen[bytes] | None = None

    def boot(self, timeout: float = 300) -> float:
        """Spawn and wait for the ready marker on the console; seconds from spawn."""
        console = self.dir / "console.log"
        console.write_bytes(b"")
        t0 = time.monotonic()
        with (self.dir / "vmm.log").open("wb") as out:
            self.proc = REAPER.track(
                subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        while time.monotonic() - t0 < timeout:
            if READY in console.read_bytes():
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                tail = console.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"raw qemu exited: {tail}")
            time.sleep(0.01)
        raise RuntimeError("raw qemu: no ready marker in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def argv_differences(api_argv: list[str], raw_argv: list[str], api_dir: str, raw_dir: str):
    """Tokens that differ between the API VM's recorded argv and the raw one (paths and
    names normalized): proof that both boot the same machine."""

    def norm(argv: list[str], d: str) -> list[str]:
        out = []
        for tok in argv:
            tok = tok.replace(d, "<vmdir>")
            tok = re.sub(r"nexus-[A-Za-z0-9_-]+", "nexus-<id>", tok)
            tok = re.sub(r"nexus\.hostname=\S+", "nexus.hostname=<name>", tok)
            tok = re.sub(r"/[^,\s]*/images/[^/,\s]+/", "<image>/", tok)
            out.append(tok)
        return out

    a, b = norm(api_argv, api_dir), norm(raw_argv, raw_dir)
    return sorted(set(a) ^ set(b))


# --- 1. boot ----------------------------------------------------------------------------


def bench_boot(m: Manager, work: Path, runs: int, image: str, image_dir: Path) -> dict:
    """API create?wait=true -> ready vs raw qemu -> ready marker, ABBA-interleaved."""
    memory = 256
    raw_t: list[float] = []
    api_t: list[float] = []
    ratios: list[float] = []
    diffs: list[str] = []
    with m.client() as c:
        log("boot: warm-up (one raw, one API VM; not counted)")
        raw = RawVm(work, "raw-warm", image_dir, memory)
        raw.boot()
        raw.remove()
        _, vm = api_create(c, "bench-boot-warm", image, memory)
        with contextlib.suppress(OSError, ValueError):
            rec = json.loads((m.state_dir / "vms" / vm["id"] / "vmm.json").read_text())
            diffs = argv_differences(
                rec["argv"], raw.argv, str(m.state_dir / "vms" / vm["id"]), str(raw.dir)
            )
        api_delete(c, vm["id"])
        for i in range(runs):
            pair: dict[str, float] = {}
            order = ("raw", "api") if i % 2 == 0 else ("api", "raw")
            for side in order:
                if side == "raw":
                    raw = RawVm(work, f"raw-boot-{i}", image_dir, memory)
                    pair["raw"] = raw.boot()
                    raw.remove()
                else:
                    pair["api"], vm = api_create(c, f"bench-boot-{i}", image, memory)
                    api_delete(c, vm["id"])
            raw_t.append(pair["raw"])
            api_t.append(pair["api"])
            ratios.append(pair["api"] / pair["raw"])
            log(f"boot {i + 1}/{runs}: raw {pair['raw']:.2f} s, api {pair['api']:.2f} s")
    return {
        "boot_ratio": round(median(ratios), 3),
        "boot_api_s_median": round(median(api_t), 3),
        "boot_raw_s_median": round(median(raw_t), 3),
        "boot_api_s": [round(x, 3) for x in api_t],
        "boot_raw_s": [round(x, 3) for x in raw_t],
        "boot_pair_ratios": [round(x, 3) for x in ratios],
        "boot_image": image,
        "boot_memory_mib": memory,
        "boot_argv_differences": diffs,
    }


# --- 2. restore ---------------------------------------------------------------------------


def exec_probe(c: httpx.Client, vm_id: str, timeout: float = 120) -> None:
    """Until ``POST /v1/vms/{id}/exec ["true"]`` succeeds: the guest answers commands."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = c.post(f"/v1/vms/{vm_id}/exec", json={"command": ["true"]}, timeout=30)
        if r.status_code == 200 and r.json().get("exit_code") == 0:
            return
        last = f"{r.status_code} {r.text[:300]}"
        time.sleep(0.05)
    raise RuntimeError(f"guest {vm_id} not responsive: {last}")


def bench_restore_api(m: Manager, runs: int, image: str) -> dict:
    """Same VM: stop -> start?wait + exec (cold) vs snapshot -> restore?wait + exec."""
    memory = 256
    cold: list[float] = []
    rest: list[float] = []
    ratios: list[float] = []
    snap_s: list[float] = []
    with m.client() as c:
        _, vm = api_create(c, "bench-snap", image, memory)
        vid = vm["id"]
        exec_probe(c, vid)
        try:
            for i in range(runs):
                r = c.post(f"/v1/vms/{vid}/stop", params={"wait": "true", "timeout": 120})
                r.raise_for_status()
                t0 = time.monotonic()
                r = c.post(f"/v1/vms/{vid}/start", params={"wait": "true", "timeout": 300})
                r.raise_for_status()
                exec_probe(c, vid)
                cold.append(time.monotonic() - t0)
                t0 = time.monotonic()
                r = c.post(
                    f"/v1/vms/{vid}/snapshots",
                    params={"wait": "true", "timeout": 300},
                    json={"name": f"bench-{i}"},
                )
                if r.status_code == 404 and "snapshot" not in r.text.lower():
                    raise NotImplementedError("no snapshot API")
                if r.status_code != 200:
                    raise RuntimeError(f"snapshot: {r.status_code} {r.text[:1000]}")
                snap_s.append(time.monotonic() - t0)
                sid = r.json()["id"]
                time.sleep(1.0)  # let the guest run on after the snapshot
                t0 = time.monotonic()
                r = c.post(f"/v1/snapshots/{sid}/restore", params={"wait": "true", "timeout": 300})
                if r.status_code != 200:
                    raise RuntimeError(f"restore: {r.status_code} {r.text[:1000]}")
                exec_probe(c, vid)
                rest.append(time.monotonic() - t0)
                ratios.append(rest[-1] / cold[-1])
                c.delete(f"/v1/snapshots/{sid}")
                log(f"restore {i + 1}/{runs}: cold {cold[-1]:.2f} s, restore {rest[-1]:.2f} s")
        finally:
            api_delete(c, vid)
    return {
        "restore_ratio": round(median(ratios), 3),
        "restore_level": "api",
        "restore_s": [round(x, 3) for x in rest],
        "restore_cold_boot_s": [round(x, 3) for x in cold],
        "restore_snapshot_s": [round(x, 3) for x in snap_s],
        "restore_memory_mib": memory,
    }


def bench_restore_driver(work: Path, runs: int, image_dir: Path) -> dict:
    """Driver level (no API): QemuDriver.start -> guest hello vs QemuDriver.restore -> hello."""
    from nexus.guest.client import GuestClient

    memory = 256
    drv = QemuDriver()
    vm_dir = work / "drv-snap"
    vm_dir.mkdir(parents=True, exist_ok=True)
    clone_disk(image_dir / "rootfs.ext4", vm_dir / "disk.img")
    spec = MachineSpec(
        vm_id="drv-snap",
        vcpus=1,
        memory_mib=memory,
        kernel=image_dir / "vmlinuz",
        initrd=image_dir / "initrd.img",
        root_disk=vm_dir / "disk.img",
        kernel_args="nexus.hostname=drv-snap",
    )

    async def hello() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                client = await GuestClient.connect(str(vm_dir / "guest.sock"), timeout=5)
                try:
                    await client.hello(timeout=5)
                    return
                finally:
                    with contextlib.suppress(Exception):
                        await client.close()
            await asyncio.sleep(0.05)
        raise RuntimeError("guest did not answer hello")

    async def run() -> dict:
        cold: list[float] = []
        rest: list[float] = []
        for i in range(runs):
            t0 = time.monotonic()
            handle = await drv.start(spec, vm_dir)
            await hello()
            cold.append(time.monotonic() - t0)
            snap = work / f"drv-snap-{i}"
            await drv.snapshot(handle, snap)
            await drv.kill(handle)
            t0 = time.monotonic()
            handle = await drv.restore(spec, vm_dir, snap)
            await hello()
            rest.append(time.monotonic() - t0)
            await drv.kill(handle)
            shutil.rmtree(snap, ignore_errors=True)
            log(f"restore(driver) {i + 1}/{runs}: cold {cold[-1]:.2f} s, restore {rest[-1]:.2f}")
        return {
            "restore_ratio": round(median([r / c for r, c in zip(rest, cold, strict=True)]), 3),
            "restore_level": "driver",
            "restore_s": [round(x, 3) for x in rest],
            "restore_cold_boot_s": [round(x, 3) for x in cold],
            "restore_memory_mib": memory,
        }

    REAPER.dirs.append(vm_dir)
    try:
        return asyncio.run(run())
    finally:
        kill_vms(vm_dir)
        shutil.rmtree(vm_dir, ignore_errors=True)


# --- 3 + 5. density and create rate -------------------------------------------------------


def manager_rss(m: Manager, samples: int = 3) -> float:
    """Median RSS (MiB) of the manager process (which hosts the embedded agent)."""
    assert m.proc is not None
    vals = []
    for _ in range(samples):
        vals.append(rss_mib(m.proc.pid))
        time.sleep(0.5)
    return median(vals)


# --- containers -------------------------------------------------------------------------


def container_archive(dest: Path) -> None:
    """A one-layer OCI image layout tar: busybox and an entrypoint that prints a marker and
    sleeps (as what skopeo writes with ``oci-archive:``)."""
    import gzip
    import hashlib
    import io
    import tarfile

    def tar_of(entries: list[tuple[str, bytes, int, str | None]]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data, mode, link in entries:
                ti = tarfile.TarInfo(name)
                ti.mode = mode
                if link:
                    ti.type, ti.linkname = tarfile.SYMTYPE, link
                    tar.addfile(ti)
                else:
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))
        return buf.getvalue()

    run = b"#!/bin/sh\necho BENCH-ENTRYPOINT-UP\nexec sleep 3600\n"
    layer = gzip.compress(tar_of([
        ("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755, None),
        ("bin/sh", b"", 0o777, "/bin/busybox"), ("bin/sleep", b"", 0o777, "/bin/busybox"),
        ("run.sh", run, 0o755, None)]))  # fmt: skip
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> dict[str, Any]:
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return {"digest": f"sha256:{d}", "size": len(data)}

    cfg = {"config": {"Entrypoint": ["/run.sh"], "Env": ["PATH=/bin"]}}
    manifest = {"schemaVersion": 2, "config": put(json.dumps(cfg).encode()),
                "layers": [put(layer)]}  # fmt: skip
    index = {"schemaVersion": 2, "manifests": [put(json.dumps(manifest).encode())]}
    files = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": json.dumps(index).encode(),
        **{f"blobs/sha256/{d}": b for d, b in blobs.items()},
    }
    dest.write_bytes(tar_of([(n, b, 0o644, None) for n, b in files.items()]))


def bench_container(m: Manager, work: Path, runs: int, image_dir: Path) -> dict:
    """Container deploy (image cached) -> entrypoint running, vs raw qemu -> ready marker of
    the base image, ABBA-interleaved."""
    memory = 256
    archive = work / "bench-container.tar"
    container_archive(archive)
    ratios: list[float] = []
    api_t: list[float] = []
    raw_t: list[float] = []
    with m.client() as c:
        r = c.post(
            "/v1/container-images/import",
            params={"name": "bench"},
            content=archive.read_bytes(),
            headers={"Content-Type": "application/x-tar"},
        )
        r.raise_for_status()

        def deploy(name: str) -> float:
            t0 = time.monotonic()
            r = c.post("/v1/containers", json={"name": name, "image": "bench",
                                               "memory_mib": memory})  # fmt: skip
            r.raise_for_status()
            cid = r.json()["id"]
            while True:
                got = c.get(f"/v1/containers/{cid}").json()
                if got["state"] == "running":
                    took = time.monotonic() - t0
                    break
                if got["state"] == "failed" or time.monotonic() - t0 > 300:
                    raise RuntimeError(f"container {name}: {got}")
                time.sleep(0.02)
            d = c.delete(f"/v1/containers/{cid}")
            if d.status_code == 202:
                wait_op(c, d.json())
            return took

        log("container: warm-up (not counted)")
        deploy("bench-ctr-warm")
        for i in range(runs):
            pair: dict[str, float] = {}
            for side in ("raw", "api") if i % 2 == 0 else ("api", "raw"):
                if side == "raw":
                    raw = RawVm(work, f"raw-ctr-{i}", image_dir, memory)
                    pair["raw"] = raw.boot()
                    raw.remove()
                else:
                    pair["api"] = deploy(f"bench-ctr-{i}")
            raw_t.append(pair["raw"])
            api_t.append(pair["api"])
            ratios.append(pair["api"] / pair["raw"])
            log(f"container {i + 1}/{runs}: raw {pair['raw']:.2f} s, "
                f"deploy->running {pair['api']:.2f} s")  # fmt: skip
    return {
        "container_ratio": round(median(ratios), 3),
        "container_deploy_s_median": round(median(api_t), 3),
        "container_raw_s_median": round(median(raw_t), 3),
        "container_pair_ratios": [round(x, 3) for x in ratios],
    }


def bench_density(
    m: Manager, work: Path, image: str, image_dir: Path, count: int, conc: int, rounds: int
) -> dict:
    """Rounds of ``count`` VMs (concurrency ``conc``), API vs raw, ABBA. The API rounds also
    measure the manager's RSS growth with ``count`` running VMs and each QEMU's RSS."""
    memory = 128
    api_rates: list[float] = []
    raw_rates: list[float] = []
    growth: list[float] = []
    vmm_rss: list[float] = []
    base_rss: list[float] = []
    with m.client() as c:
        log("density: warm-up API VM (not counted)")
        _, vm = api_create(c, "bench-dens-warm", image, memory)
        api_delete(c, vm["id"])
        order = ["raw", "api", "api", "raw", "raw", "api"][: 2 * rounds]
        for n, side in enumerate(order):
            if side == "api":
                time.sleep(2)
                rss0 = manager_rss(m)
                names = [f"bench-d{n}-{i}" for i in range(count)]
                t0 = time.monotonic()
                try:
                    with ThreadPoolExecutor(conc) as pool:
                        vms = list(pool.map(lambda nm: api_create(c, nm, image, memory)[1], names))
                except BaseException:
                    delete_all(c, "bench-d")
                    raise
                elapsed = time.monotonic() - t0
                api_rates.append(count / elapsed)
                time.sleep(2)
                rss10 = manager_rss(m)
                base_rss.append(rss0)
                growth.append((rss10 - rss0) / count)
                pids = qemu_pids_under(m.state_dir)
                vmm_rss.extend(rss_mib(p) for p in pids)
                log(
                    f"density api: {count} VMs in {elapsed:.1f} s; manager RSS "
                    f"{rss0:.1f} -> {rss10:.1f} MiB; {len(pids)} QEMUs"
                )
                with ThreadPoolExecutor(conc) as pool:
                    list(pool.map(lambda v: api_delete(c, v["id"]), vms))
            else:
                raws = [RawVm(work, f"raw-d{n}-{i}", image_dir, memory) for i in range(count)]
                t0 = time.monotonic()
                try:
                    with ThreadPoolExecutor(conc) as pool:
                        list(pool.map(lambda r: r.boot(), raws))
                    elapsed = time.monotonic() - t0
                    raw_rates.append(count / elapsed)
                    log(f"density raw: {count} VMs in {elapsed:.1f} s")
                finally:
                    for r in raws:
                        r.remove()
    rate_ratio = median(api_rates) / median(raw_rates)
    return {
        "agent_mib_per_vm": round(median(growth), 3),
        "agent_process": "nexus-manager with the embedded agent (one process)",
        "agent_rss_base_mib": [round(x, 1) for x in base_rss],
        "agent_growth_mib_per_vm": [round(x, 3) for x in growth],
        "vmm_rss_mib_per_vm": round(median(vmm_rss), 1),
        "vmm_overhead_mib_per_vm": round(median(vmm_rss) - memory, 1),
        "guest_memory_mib": memory,
        "density_vms": count,
        "create_rate_ratio": round(rate_ratio, 3),
        "create_rate_api_vms_per_s": [round(x, 3) for x in api_rates],
        "create_rate_raw_vms_per_s": [round(x, 3) for x in raw_rates],
        "create_concurrency": conc,
        "density_image": image,
    }


# --- 4. API throughput ----------------------------------------------------------------


def seed_vms(db_path: Path, template_id: str, rows: int) -> None:
    """Copy the template VM row ``rows`` times (new id, name, timestamps) straight into SQLite."""
    con = sqlite3.connect(db_path)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(vms)")]
        tpl = dict(
            zip(
                cols,
                con.execute(
                    f"SELECT {','.join(cols)} FROM vms WHERE id=?", (template_id,)
                ).fetchone(),
                strict=True,
            )
        )
        prefix = template_id.split("_", 1)[0] + "_" if "_" in template_id else "vm_"
        base = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
        fmt = tpl.get("created_at")
        out = []
        for i in range(rows):
            row = dict(tpl)
            row["id"] = f"{prefix}bench{i:08d}{secrets.token_hex(4)}"
            row["name"] = f"bench-{i:05d}"
            ts = base + timedelta(seconds=i)
            stamp = ts.isoformat(sep=" ") if isinstance(fmt, str) else ts
            for k in ("created_at", "updated_at"):
                if k in row:
                    row[k] = stamp
            out.append(tuple(row[c] for c in cols))
        marks = ",".join("?" * len(cols))
        con.executemany(f"INSERT INTO vms ({','.join(cols)}) VALUES ({marks})", out)
        con.commit()
    finally:
        con.close()


WRK_LAT = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(url: str, token: str | None, seconds: int, conns: int) -> tuple[float, float]:
    """Requests/s and p99 latency (ms) from ``wrk`` (one thread, ``conns`` connections)."""
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    p = REAPER.track(subprocess.Popen([*argv, url], stdout=subprocess.PIPE, text=False))
    out_b, _ = p.communicate(timeout=seconds + 60)
    out = out_b.decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"wrk got {non2xx.group(1)} error responses from {url}:\n{out}")
    mm = WRK_LAT.search(out)
    assert mm is not None, out
    val = float(mm.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mm.group(2)]
    return rps, val


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def bench_api(m: Manager, work: Path, image: str, rows: int, seconds: int, rounds: int) -> dict:
    """GET /v1/vms?limit=50 with ``rows`` VMs: Nexus vs a bare FastAPI app, interleaved."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with m.client() as c:
        r = c.post(
            "/v1/vms",
            params={"wait": "true"},
            json={"name": "bench-api-tpl", "image": image, "memory_mib": 128, "start": False},
        )
        if r.status_code != 200:
            raise RuntimeError(f"template VM: {r.status_code} {r.text[:500]}")
        tpl = r.json()["id"]
    m.stop()
    kill_vms(m.state_dir)
    t0 = time.monotonic()
    seed_vms(m.state_dir / "nexus.db", tpl, rows)
    log(f"api: inserted {rows} VM rows in {time.monotonic() - t0:.1f} s")
    api = Manager(m.state_dir, embedded_agent=False).start()
    path = "/v1/vms?limit=50"
    with api.client() as c:
        resp = c.get(path)
        resp.raise_for_status()
        body = resp.json()
    if not body.get("next_cursor") or len(body["items"]) != 50:
        raise RuntimeError(f"unexpected list: {len(body['items'])} items, not 50 and a next page")
    body_file = work / "vms-page.json"
    body_file.write_bytes(resp.content)
    bare_port = free_port()
    bare = REAPER.track(
        subprocess.Popen(
            [sys.executable, "-m", "bench.bare_app", str(body_file), str(bare_port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    bare_url = f"http://127.0.0.1:{bare_port}"
    wait_http(bare_url + "/health/live")
    if httpx.get(bare_url + path).content != resp.content:
        log("api: note: bare body differs byte-wise from Nexus's (same JSON data)")
    conns = 8
    nexus_rps: list[float] = []
    bare_rps: list[float] = []
    nexus_p99: list[float] = []
    bare_p99: list[float] = []
    log("api: warm-up")
    wrk(api.url + path, api.token, 2, conns)
    wrk(bare_url + path, None, 2, conns)
    for i in range(rounds):
        order = ("nexus", "bare") if i % 2 == 0 else ("bare", "nexus")
        for side in order:
            if side == "nexus":
                rps, p99 = wrk(api.url + path, api.token, seconds, conns)
                nexus_rps.append(rps)
                nexus_p99.append(p99)
            else:
                rps, p99 = wrk(bare_url + path, None, seconds, conns)
                bare_rps.append(rps)
                bare_p99.append(p99)
        log(
            f"api {i + 1}/{rounds}: nexus {nexus_rps[-1]:.0f} req/s p99 {nexus_p99[-1]:.1f} ms; "
            f"bare {bare_rps[-1]:.0f} req/s p99 {bare_p99[-1]:.1f} ms"
        )
    bare.terminate()
    api.stop()
    ratios = [n / b for n, b in zip(nexus_rps, bare_rps, strict=True)]
    log("api: profiling the Nexus endpoint under load (pyinstrument)")
    prof_prefix = RESULTS / "api-profile"
    prof = Manager(m.state_dir, embedded_agent=False, profile_out=prof_prefix).start()
    prof_rps, _ = wrk(prof.url + path, prof.token, seconds, conns)
    prof.stop(signal.SIGINT)
    summary: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads(prof_prefix.with_suffix(".json").read_text())
    return {
        "api_ratio": round(median(ratios), 3),
        "api_p99_ms": round(median(nexus_p99), 2),
        "api_nexus_rps": [round(x, 1) for x in nexus_rps],
        "api_bare_rps": [round(x, 1) for x in bare_rps],
        "api_nexus_p99_ms": [round(x, 2) for x in nexus_p99],
        "api_bare_p99_ms": [round(x, 2) for x in bare_p99],
        "api_rows": rows,
        "api_load": f"wrk -t1 -c{conns} -d{seconds}s, loopback, JWT bearer",
        "api_server": "uvicorn, 1 worker, manager without embedded agent",
        "api_profiled_rps": round(prof_rps, 1),
        "api_profile": {
            "text": str(prof_prefix.with_suffix(".txt").relative_to(ROOT)),
            "by_package": summary.get("self_time_by_package", {}),
            "top_functions": summary.get("top_functions_self", [])[:10],
        },
    }


# --- output -----------------------------------------------------------------------------


def verdict(key: str, value: float) -> str:
    goal = GOALS.get(key)
    if goal is None or value != value:  # NaN
        return ""
    op, lim = goal
    ok = value <= lim if op == "<=" else value >= lim
    return f"{op} {lim:g}  {'met' if ok else 'NOT met'}"


def print_table(res: dict[str, Any]) -> None:
    rows = [
        ("boot_ratio", "API create->ready / raw qemu->ready (median of pairs)"),
        ("boot_api_s_median", "API create->ready, s"),
        ("boot_raw_s_median", "raw qemu->ready marker, s"),
        ("container_ratio", "container deploy->running / raw boot->ready"),
        ("restore_ratio", "restore->responsive / cold boot->responsive"),
        ("agent_mib_per_vm", "manager+agent RSS growth per running VM, MiB"),
        ("vmm_rss_mib_per_vm", "QEMU RSS per VM, MiB (guest memory_mib beside)"),
        ("api_ratio", "GET /v1/vms?limit=50 req/s, Nexus / bare FastAPI"),
        ("api_p99_ms", "GET /v1/vms?limit=50 p99, ms"),
        ("create_rate_ratio", "VMs/s to running, API / raw (concurrency 4)"),
        *fn_bench.ROWS,
    ]
    print()
    print(f"{'key':<22} {'value':>10}  {'goal':<16} what")
    print("-" * 100)
    for key, what in rows:
        if key not in res:
            continue
        label = key
        if key == "restore_ratio" and res.get("restore_level") == "driver":
            label = "restore_ratio (driver-level)"
        if key == "vmm_rss_mib_per_vm":
            what += f" = {res.get('guest_memory_mib')}"
        print(f"{label:<22} {res[key]:>10}  {verdict(key, res[key]):<16} {what}")
    print()


SUMMARY_KEYS = (
    "boot_ratio",
    "container_ratio",
    "restore_ratio",
    "agent_mib_per_vm",
    "vmm_rss_mib_per_vm",
    "api_ratio",
    "api_p99_ms",
    "create_rate_ratio",
    *fn_bench.SUMMARY_KEYS,
)


def summary_line(res: dict[str, Any]) -> str:
    parts = []
    for k in SUMMARY_KEYS:
        if k in res:
            name = k
            if k == "restore_ratio" and res.get("restore_level") == "driver":
                name = "restore_ratio_driver_level"
            parts.append(f"{name}={res[k]}")
    parts.append(f"accel={res['machine']['accel']}")
    for k, v in res.get("errors", {}).items():
        parts.append(f"{k}=ERROR({v[:60]!r})")
    return "BENCH " + " ".join(parts)


# --- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=5, help="boot pairs (>= 5 for the figure)")
    ap.add_argument("--restore-runs", type=int, default=3)
    ap.add_argument("--restore-level", choices=["auto", "api", "driver"], default="auto")
    ap.add_argument("--only", default="boot,restore,density,api,functions,container,fleet")
    ap.add_argument("--fleet-hosts", type=int, default=1000)
    ap.add_argument("--fleet-seconds", type=float, default=60)
    ap.add_argument("--fleet-db", default="pg,sqlite")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--density-vms", type=int, default=10)
    ap.add_argument("--density-rounds", type=int, default=2)
    ap.add_argument("--api-seconds", type=int, default=8)
    ap.add_argument("--api-rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer runs (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.restore_runs, args.density_vms = 2, 1, 4
        args.density_rounds, args.api_seconds, args.api_rounds, args.rows = 1, 3, 1, 2000
        args.fleet_hosts, args.fleet_seconds = 100, 20
    only = set(args.only.split(","))

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    res: dict[str, Any] = {"machine": machine_facts(), "errors": {}}
    res["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    log(f"machine: {res['machine']['cpu_model']}, {res['machine']['cores']} cores, "
        f"accel {res['machine']['accel']}, {res['machine']['qemu_version']}")  # fmt: skip
    base = Path(os.environ.get("NEXUS_BENCH_DIR", "/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nexus-bench-", dir=base))
    state = work / "state"
    state.mkdir()
    REAPER.dirs += [work]
    m = Manager(state)
    try:
        log(f"starting the manager (state in {state})")
        m.start()
        with m.client() as c:
            host = c.get("/v1/hosts").json()
            hosts = host["items"] if isinstance(host, dict) else host
            if hosts:
                res["machine"]["accel_reported_by_agent"] = hosts[0].get("accel")
        default_dir = Path()
        if only & {"boot", "restore", "functions", "container"}:
            log("image: default (built or taken from the cache through the API)")
            _, default_dir = ensure_image(m, "default")
        test_dir = Path()
        if only & {"density", "api"}:
            log("image: test")
            _, test_dir = ensure_image(m, "test")

        def phase(name: str, fn: Callable[[], dict]) -> None:
            if name not in only:
                return
            t0 = time.monotonic()
            try:
                res.update(fn())
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                log(f"{name}: FAILED: {exc!r}")
                res["errors"][name] = str(exc)[:2000]
            res.setdefault("phase_seconds", {})[name] = round(time.monotonic() - t0, 1)

        phase("boot", lambda: bench_boot(m, work, args.runs, "default", default_dir))
        phase("container", lambda: bench_container(m, work, max(3, args.runs // 2), default_dir))

        def restore() -> dict:
            if args.restore_level in ("auto", "api"):
                try:
                    return bench_restore_api(m, args.restore_runs, "default")
                except (NotImplementedError, RuntimeError, httpx.HTTPError) as exc:
                    if args.restore_level == "api":
                        raise
                    log(f"restore: API path unusable ({exc!r:.300}); measuring at driver level")
                    res["restore_api_error"] = str(exc)[:1000]
            return bench_restore_driver(work, args.restore_runs, default_dir)

        phase("restore", restore)
        phase(
            "density",
            lambda: bench_density(
                m, work, "test", test_dir, args.density_vms, 4, args.density_rounds
            ),
        )
        phase("api", lambda: bench_api(m, work, "test", args.rows, args.api_seconds,
                                       args.api_rounds))  # fmt: skip
        phase(
            "functions",
            lambda: fn_bench.bench_functions(
                m.client, log, cold_runs=1 if args.quick else 3, warm_runs=30 if args.quick else 100
            ),
        )
        phase("fleet", lambda: fleet.bench_fleet(args.fleet_hosts, args.fleet_seconds,
                                                 args.fleet_db))  # fmt: skip
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        res["errors"]["interrupted"] = "yes"
    except Exception as exc:
        log(f"FAILED: {exc!r}")
        res["errors"]["setup"] = str(exc)[:2000]
    finally:
        m.stop()
        REAPER.reap()
        kill_vms(work)
        shutil.rmtree(work, ignore_errors=True)
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    res["total_seconds"] = round(time.monotonic() - started, 1)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(res, indent=2, default=str) + "\n"
    (RESULTS / f"bench-{stamp}.json").write_text(text)
    (RESULTS / "latest.json").write_text(text)
    print_table(res)
    print(f"results: bench/results/bench-{stamp}.json  (profile: bench/results/api-profile.txt)")
    print(summary_line(res))
    for key in sorted(k for k in res if k.startswith("fleet_")):
        print(fleet.line({"db": key.removeprefix("fleet_"), **res[key]}))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
