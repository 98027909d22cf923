"""Inside a real guest through the public API: exec, shells over WebSocket, console follow,
metrics — one all-in-one manager (embedded agent) and ONE VM of the default image
(debootstrap + python3 + the guest agent) for the whole module.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pexpect
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.support.aio import all_in_one
from tests.support.server import BIN, LiveServer

pytestmark = pytest.mark.vm
PW = "guest-api-admin-pw"


@dataclass
class Env:
    srv: LiveServer
    h: dict[str, str]
    vm_id: str

    @property
    def ws(self) -> str:
        return self.srv.url.replace("http://", "ws://")

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.srv.url, headers=self.h, timeout=120)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A manager with the embedded agent, the default image, and one running VM."""
    state = tmp_path_factory.mktemp("guest") / "state"
    env = {"NEXUS_METRICS_INTERVAL_S": "1", "NEXUS_STOP_TIMEOUT_S": "10"}
    with all_in_one(state, admin_password=PW, env=env) as a:
        r = httpx.post(
            f"{a.srv.url}/v1/vms?wait=true",
            json={"name": "inside", "image": a.image_id, "memory_mib": 256},
            headers=a.h,
            timeout=300,
        )
        assert r.status_code == 200, r.text
        vm = r.json()
        assert vm["state"] == "running" and vm["ready_at"], vm
        yield Env(a.srv, a.h, vm["id"])


def _exec(e: Env, command: list[str], **kw: object) -> dict:
    r = httpx.post(
        f"{e.srv.url}/v1/vms/{e.vm_id}/exec",
        json={"command": command, **kw},
        headers=e.h,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_exec_uname_and_meminfo(env: Env) -> None:
    res = _exec(env, ["uname", "-a"], timeout_s=30)
    assert res["exit_code"] == 0 and res["stdout"].startswith("Linux "), res
    assert not res["timed_out"] and not res["truncated"]
    res = _exec(env, ["cat", "/proc/meminfo"])
    assert "MemTotal:" in res["stdout"] and "MemAvailable:" in res["stdout"]
    res = _exec(env, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (res["exit_code"], res["stdout"], res["stderr"]) == (3, "out\n", "err\n")
    res = _exec(env, ["cat"], stdin="hello from stdin")
    assert res["stdout"] == "hello from stdin"
    res = _exec(env, ["pwd"], cwd="/tmp", env={"FOO": "bar"})
    assert res["stdout"] == "/tmp\n"
    r = httpx.post(
        f"{env.srv.url}/v1/vms/{env.vm_id}/exec",
        json={"command": ["/no/such/binary"]},
        headers=env.h,
        timeout=60,
    )
    assert r.status_code == 422, r.text  # the agent refused it: hostapi.problems
    # exec is audited with its argv
    rows = httpx.get(
        f"{env.srv.url}/v1/audit",
        params={"resource_id": env.vm_id, "action": "vm.exec"},
        headers=env.h,
    ).json()["items"]
    assert any(row["after"]["argv"] == ["uname", "-a"] for row in rows)


def test_exec_one_mib_output_round_trips(env: Env) -> None:
    expected = bytes(range(256)) * 4096  # 1 MiB, every byte value
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096)"
    res = _exec(env, ["python3", "-c", script], timeout_s=60)
    assert res["exit_code"] == 0 and not res["truncated"]
    out = base64.b64decode(res["stdout_base64"])
    assert len(out) == len(expected) and out == expected
    # stdin bytes round-trip too (checked by hash in the guest)
    data = os.urandom(200_000)
    res = _exec(env, ["sha256sum"], stdin_base64=base64.b64encode(data).decode(), timeout_s=60)
    assert res["stdout"].split()[0] == hashlib.sha256(data).hexdigest()
    # and the cap: truncated flag, output cut at max_output_bytes
    res = _exec(env, ["python3", "-c", script], max_output_bytes=1000)
    assert res["truncated"] and len(base64.b64decode(res["stdout_base64"])) == 1000


def test_exec_timeout_kills_the_command(env: Env) -> None:
    t0 = time.monotonic()
    res = _exec(env, ["sleep", "30"], timeout_s=1)
    elapsed = time.monotonic() - t0
    assert res["timed_out"] and res["exit_code"] != 0, res
    assert elapsed < 5, elapsed
    # it is really gone in the guest
    res = _exec(env, ["sh", "-c", "cat /proc/[0-9]*/comm | grep -x sleep || echo none"])
    assert "none" in res["stdout"]


async def _read_until(ws: ClientConnection, needle: bytes, timeout: float = 30) -> bytes:
    buf = b""
    async with asyncio.timeout(timeout):
        while needle not in buf:
            msg = await ws.recv()
            if isinstance(msg, bytes):
                buf += msg
            else:
                buf += msg.encode()
    return buf


def _shell_url(env: Env, **q: object) -> str:
    qs = "&".join(f"{k}={v}" for k, v in q.items())
    return f"{env.ws}/v1/vms/{env.vm_id}/shell/ws" + (f"?{qs}" if qs else "")


async def test_shell_over_websocket(env: Env) -> None:
    async with connect(_shell_url(env, cols=120, rows=30), additional_headers=env.h) as ws:
        await ws.send(b"echo $((6*7))\n")
        out = await _read_until(ws, b"42\r\n")
        assert b"42" in out
        await ws.send(json.dumps({"type": "resize", "cols": 100, "rows": 40}))
        await ws.send(b"stty size\n")
        await _read_until(ws, b"40 100")
        await ws.send(b"exit 7\n")
        exit_frame = None
        async with asyncio.timeout(30):
            async for msg in ws:
                if isinstance(msg, str) and '"exit"' in msg:
                    exit_frame = json.loads(msg)
        assert exit_frame == {"type": "exit", "exit_code": 7}
    # audited: open and close with a duration
    await asyncio.sleep(0.5)
    async with env.api() as api:
        rows = (await api.get("/v1/audit", params={"resource_id": env.vm_id})).json()["items"]
    actions = [r["action"] for r in rows]
    assert "vm.shell.open" in actions and "vm.shell.close" in actions
    closed = next(r for r in rows if r["action"] == "vm.shell.close")
    assert closed["after"]["duration_s"] > 0 and closed["after"]["exit_code"] == 7


async def test_two_shells_at_once(env: Env) -> None:
    async with (
        connect(_shell_url(env), additional_headers=env.h) as a,
        connect(_shell_url(env), additional_headers=env.h) as b,
    ):
        await a.send(b"X=alpha; echo A-$X-$$\n")
        await b.send(b"X=beta; echo B-$X-$$\n")
        out_a = await _read_until(a, b"A-alpha-")
        out_b = await _read_until(b, b"B-beta-")
        assert b"beta" not in out_a and b"alpha" not in out_b
        # still independent: a long command in one does not block the other
        await a.send(b"sleep 3; echo A-DONE\n")
        await b.send(b"echo B-QUICK\n")
        await _read_until(b, b"B-QUICK\r\n", timeout=2.5)
        await _read_until(a, b"A-DONE\r\n")


async def test_shell_ticket_for_browsers(env: Env) -> None:
    async with env.api() as api:
        r = await api.post(f"/v1/vms/{env.vm_id}/shell/ticket")
    assert r.status_code == 201, r.text
    t = r.json()
    async with connect(f"{env.ws}{t['ws_path']}?ticket={t['ticket']}") as ws:
        await ws.send(b"echo ticket-$((1+1))\n")
        await _read_until(ws, b"ticket-2")
    with pytest.raises(InvalidStatus) as info:  # single use
        async with connect(f"{env.ws}{t['ws_path']}?ticket={t['ticket']}"):
            pass
    assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as info:  # no credentials at all
        async with connect(_shell_url(env)):
            pass
    assert info.value.response.status_code == 401


async def test_console_follow(env: Env) -> None:
    async with connect(
        f"{env.ws}/v1/vms/{env.vm_id}/console/ws?tail=50", additional_headers=env.h
    ) as ws:
        first = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(first, str) and first
        # write to the serial console from inside and see it arrive live
        async with env.api() as api:
            cmd = ["sh", "-c", "echo NEXUS-CONSOLE-PING > /dev/console"]
            r = await api.post(f"/v1/vms/{env.vm_id}/exec", json={"command": cmd})
            assert r.status_code == 200, r.text
            await _read_until(ws, b"NEXUS-CONSOLE-PING", timeout=15)
            text = (await api.get(f"/v1/vms/{env.vm_id}/console?tail=20")).text
    assert "NEXUS-CONSOLE-PING" in text


async def test_metrics_latest_history_and_stream(env: Env) -> None:
    base = f"/v1/vms/{env.vm_id}"
    api = env.api()
    deadline = time.monotonic() + 30
    points: list[dict] = []
    while time.monotonic() < deadline:
        r = await api.get(f"{base}/metrics/history", params={"step": 1})
        assert r.status_code == 200, r.text
        points = [p for p in r.json()["points"] if p["mem_total_bytes"]]
        if len(points) >= 3:
            break
        await asyncio.sleep(1)
    assert len(points) >= 3, points
    latest = (await api.get(f"{base}/metrics")).json()
    assert latest["rss_bytes"] > 10 * 2**20  # a real QEMU process
    assert latest["disk_allocated_bytes"] > 0 and latest["cpu_time_s"] > 0
    assert 0 < latest["mem_used_bytes"] < latest["mem_total_bytes"]
    assert latest["disk_used_bytes"] > 0 and latest["load1"] is not None
    coarse = await api.get(f"{base}/metrics/history", params={"step": 3600})
    await api.aclose()
    assert len(coarse.json()["points"]) <= 2
    async with connect(f"{env.ws}/v1/vms/{env.vm_id}/metrics/ws", additional_headers=env.h) as ws:
        one = json.loads(await asyncio.wait_for(ws.recv(), 10))
        two = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert two["sampled_at"] > one["sampled_at"] and two["vm_id"] == env.vm_id


def _cli_env(env: Env, tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    out.update(
        {
            "NEXUS_URL": env.srv.url,
            "NEXUS_TOKEN": env.h["Authorization"].split(" ", 1)[1],
            "NEXUS_CONFIG_DIR": str(tmp_path / "cli"),
            "TERM": "xterm",
        }
    )
    return out


def test_cli_exec_returns_the_remote_exit_code(env: Env, tmp_path: Path) -> None:
    cli = [str(BIN / "nexus"), "vm", "exec", "inside", "--"]
    p = subprocess.run(
        [*cli, "sh", "-c", "echo hi; echo oops >&2; exit 3"],
        env=_cli_env(env, tmp_path),
        capture_output=True,
        timeout=120,
    )
    assert (p.returncode, p.stdout, p.stderr) == (3, b"hi\n", b"oops\n"), p
    p = subprocess.run(
        [*cli, "ls", "-la", "/"], env=_cli_env(env, tmp_path), capture_output=True, timeout=120
    )
    assert p.returncode == 0 and b"etc" in p.stdout, p
    p = subprocess.run(
        [str(BIN / "nexus"), "-o", "json", "vm", "metrics", "inside"],
        env=_cli_env(env, tmp_path),
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 0 and json.loads(p.stdout)["vm_id"] == env.vm_id, p
    p = subprocess.run(
        [str(BIN / "nexus"), "vm", "console", "inside", "--tail", "5"],
        env=_cli_env(env, tmp_path),
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 0 and p.stdout, p


def test_cli_ssh_is_a_real_terminal(env: Env, tmp_path: Path) -> None:
    child = pexpect.spawn(
        str(BIN / "nexus"),
        ["vm", "ssh", "inside"],
        env=_cli_env(env, tmp_path),
        dimensions=(30, 100),
        timeout=30,
    )
    try:
        child.expect(r"[#$] ")  # the prompt (typeahead before it may be dropped by bash)
        child.sendline("echo $((6*7))")
        child.expect(r"\r42\r\n")
        # a terminal: the guest sees our size, and follows a resize (SIGWINCH)
        child.sendline("stty size")
        child.expect(r"30 100")
        child.setwinsize(40, 120)
        time.sleep(0.5)
        child.sendline("stty size")
        child.expect(r"40 120")
        # raw mode: Ctrl-C reaches the guest (interrupts sleep), not the CLI
        child.sendline("sleep 20")
        time.sleep(1)
        child.sendcontrol("c")
        child.sendline("echo after-$((1+1))")
        child.expect("after-2", timeout=10)
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 5, (child.exitstatus, child.before)


def test_vm_from_a_memory_snapshot_takes_on_its_own_identity(env: Env) -> None:
    """Clone uniqueness inside the guest: a cold boot writes the VM's machine id; a new VM
    restored from another's memory gets its own hostname, machine id, MAC and address
    (the guest agent applies them) and can reach its source over the network."""
    from nexus.hostapi.guestboot import machine_id_for

    def run(vm_id: str, script: str) -> str:
        r = httpx.post(
            f"{env.srv.url}/v1/vms/{vm_id}/exec",
            json={"command": ["sh", "-c", script], "timeout_s": 30},
            headers=env.h,
            timeout=120,
        )
        assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
        return str(r.json()["stdout"]).strip()

    src = httpx.get(f"{env.srv.url}/v1/vms/{env.vm_id}", headers=env.h).json()
    assert src["nics"], "the default network gives every VM a NIC"
    assert run(env.vm_id, "cat /etc/machine-id") == machine_id_for(env.vm_id)
    r = httpx.post(
        f"{env.srv.url}/v1/vms/{env.vm_id}/snapshots?wait=true",
        json={"name": "for-twin"},
        headers=env.h,
        timeout=300,
    )
    assert r.status_code == 200 and r.json()["kind"] == "full", r.text
    snap = r.json()
    r = httpx.post(
        f"{env.srv.url}/v1/vms?wait=true",
        json={"name": "twin", "from_snapshot": snap["id"]},
        headers=env.h,
        timeout=300,
    )
    assert r.status_code == 200, r.text
    twin = r.json()
    try:
        nic, src_nic = twin["nics"][0], src["nics"][0]
        assert (nic["mac"], nic["ip"]) != (src_nic["mac"], src_nic["ip"])
        bb = "/usr/local/bin/busybox"
        out = run(
            twin["id"],
            f"hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address; "
            f"{bb} ip -4 -o addr show dev eth0",
        ).splitlines()
        assert out[0] == "twin" and out[1] == machine_id_for(twin["id"])
        assert out[2] == nic["mac"].lower() and f" {nic['ip']}/" in out[3], out
        # the source is unchanged, and the two reach each other with their own addresses
        assert run(env.vm_id, "hostname") == "inside"
        assert run(env.vm_id, "cat /sys/class/net/eth0/address") == src_nic["mac"].lower()
        assert "0% packet loss" in run(twin["id"], f"{bb} ping -c 2 -W 3 {src_nic['ip']}")
    finally:
        httpx.delete(f"{env.srv.url}/v1/vms/{twin['id']}?wait=true", headers=env.h, timeout=120)
        httpx.delete(f"{env.srv.url}/v1/snapshots/{snap['id']}", headers=env.h, timeout=60)


def test_default_image_tools_and_cli_cp(env: Env, tmp_path: Path) -> None:
    """The default image has ip, ping, curl, CA certificates, ps and Python's full standard
    library; `nexus vm cp` copies files in and out through the guest agent (in chunks: more
    than the manager's 1 MiB request limit)."""
    cli_env = _cli_env(env, tmp_path)
    script = (
        "ip -br link show lo && ping -c1 -W2 127.0.0.1 >/dev/null && curl --version >/dev/null "
        "&& test -s /etc/ssl/certs/ca-certificates.crt && ps -e >/dev/null && python3 -c "
        "'import http.server, email, sqlite3, ssl, venv, urllib.request; print(\"stdlib ok\")'"
    )
    p = subprocess.run(
        [str(BIN / "nexus"), "vm", "exec", "inside", "--", "sh", "-c", script],
        env=cli_env,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 0 and b"stdlib ok" in p.stdout, p
    data = os.urandom(1536 * 1024)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    p = subprocess.run(
        [str(BIN / "nexus"), "vm", "cp", str(src), "inside:/tmp/blob.bin", "--mode", "600"],
        env=cli_env,
        capture_output=True,
        timeout=300,
    )
    assert p.returncode == 0, p
    back = tmp_path / "back.bin"
    p = subprocess.run(
        [str(BIN / "nexus"), "vm", "cp", "inside:/tmp/blob.bin", str(back)],
        env=cli_env,
        capture_output=True,
        timeout=300,
    )
    assert p.returncode == 0, p
    assert back.read_bytes() == data
    p = subprocess.run(
        [str(BIN / "nexus"), "vm", "exec", "inside", "--", "stat", "-c", "%a", "/tmp/blob.bin"],
        env=cli_env,
        capture_output=True,
        timeout=120,
    )
    assert p.stdout.strip() == b"600", p
