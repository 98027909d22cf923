"""The REAL guest agent (a subprocess on a unix socket) driven by the real async client."""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import socket
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest

from nexus.guest.client import (
    GuestClient,
    GuestConnectionError,
    GuestRemoteError,
    ShellSession,
)
from nexus.guest.protocol import (
    PROTOCOL_VERSIONS,
    Frame,
    FrameParser,
    FrameType,
    encode_frame,
    encode_value,
)

from .conftest import agent_env

Agent = tuple[subprocess.Popen[bytes], Path]


async def read_until(shell: ShellSession, needle: bytes, timeout: float = 10.0) -> bytes:
    """Read shell output until ``needle`` appears; return everything read."""
    buf = b""
    async with asyncio.timeout(timeout):
        while needle not in buf:
            chunk = await shell.read()
            if not chunk:
                raise AssertionError(f"shell ended before {needle!r}: {buf!r}")
            buf += chunk
    return buf


def pid_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


# -- handshake ----------------------------------------------------------------------


async def test_hello_returns_version_and_facts(client: GuestClient) -> None:
    facts = await client.hello()
    assert facts["version"] == max(PROTOCOL_VERSIONS)
    assert facts["hostname"] == os.uname().nodename
    assert facts["kernel"] == os.uname().release
    assert facts["boot_time"] < time.time()
    assert "exec" in facts["ops"] and "shell" in facts["ops"]
    assert client.facts is facts
    assert await client.hello() is facts  # once per connection


async def test_calls_before_hello_do_the_handshake(agent: Agent) -> None:
    async with await GuestClient.connect(str(agent[1]), timeout=5) as c:
        result = await c.exec(["true"])
        assert result.exit_code == 0
        assert c.facts is not None


async def test_ping(client: GuestClient) -> None:
    rtt = await client.ping()
    assert 0 <= rtt < 5


# -- exec ---------------------------------------------------------------------------


async def test_exec_echo(client: GuestClient) -> None:
    result = await client.exec(["echo", "hello", "world"])
    assert result.stdout == b"hello world\n"
    assert result.stderr == b""
    assert result.exit_code == 0 and result.ok
    assert not result.timed_out and not result.truncated
    assert result.duration_ms >= 0


async def test_exec_exit_codes_and_stderr(client: GuestClient) -> None:
    result = await client.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    killed = await client.exec(["sh", "-c", "kill -TERM $$"])
    assert killed.exit_code == 128 + 15 and killed.signal == 15


async def test_exec_env_and_cwd(client: GuestClient, tmp_path: Path) -> None:
    result = await client.exec(
        ["sh", "-c", 'echo "$FOO"; pwd'], env={"FOO": "bar baz"}, cwd=str(tmp_path)
    )
    assert result.stdout.decode().splitlines() == ["bar baz", str(tmp_path)]


async def test_exec_stdin(client: GuestClient) -> None:
    result = await client.exec(["tr", "a-z", "A-Z"], stdin=b"shout\n")
    assert result.stdout == b"SHOUT\n"
    big = os.urandom(300_000)
    echoed = await client.exec(["cat"], stdin=big)
    assert echoed.stdout == big
    # without stdin the command reads /dev/null, so it does not hang
    assert (await client.exec(["cat"], timeout_s=5)).stdout == b""


async def test_exec_one_mib_output_intact(client: GuestClient, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    script = f"head -c 1048576 /dev/urandom > {blob}; cat {blob}; sha256sum {blob} >&2"
    result = await client.exec(["sh", "-c", script])
    assert len(result.stdout) == 1024 * 1024
    assert result.stderr.split()[0].decode() == hashlib.sha256(result.stdout).hexdigest()
    assert not result.truncated


async def test_exec_output_cap_sets_truncated(client: GuestClient) -> None:
    result = await client.exec(
        ["sh", "-c", "head -c 200000 /dev/zero; head -c 10 /dev/zero >&2"], max_output=1000
    )
    assert result.stdout == b"\0" * 1000
    assert result.stderr == b"\0" * 10
    assert result.truncated
    assert result.exit_code == 0  # the command was drained, not blocked


async def test_exec_timeout_kills_process_group(client: GuestClient) -> None:
    started = time.monotonic()
    result = await client.exec(["sh", "-c", "sleep 30 & echo $!; sleep 30"], timeout_s=1)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert 0.9 <= elapsed < 4, elapsed
    assert result.exit_code == 128 + 9
    child = int(result.stdout.split()[0])
    deadline = time.monotonic() + 3
    while not pid_gone(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pid_gone(child), "the backgrounded sleep survived the timeout"


async def test_exec_spawn_failure_is_a_remote_error(client: GuestClient) -> None:
    with pytest.raises(GuestRemoteError) as info:
        await client.exec(["/nonexistent/binary"])
    assert info.value.code == "spawn_failed"
    with pytest.raises(GuestRemoteError) as info:
        await client.exec([])
    assert info.value.code == "bad_request"


async def test_concurrent_execs_multiplex(client: GuestClient) -> None:
    results = await asyncio.gather(
        *(client.exec(["sh", "-c", f"sleep 0.{i % 3}; echo {i}"]) for i in range(12))
    )
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(12)]


async def test_cancelled_exec_kills_the_command(client: GuestClient) -> None:
    task = asyncio.ensure_future(client.exec(["sh", "-c", "echo $$ > /dev/null; sleep 30"]))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await client.exec(["echo", "still fine"])).stdout == b"still fine\n"


# -- shells -------------------------------------------------------------------------


async def test_two_shells_at_once(client: GuestClient) -> None:
    a = await client.open_shell(80, 24, command=["/bin/sh"])
    b = await client.open_shell(80, 24, command=["/bin/sh"])
    await a.write(b"echo $((6*7))\n")
    await b.write(b"echo $((6*7))\n")
    out_a, out_b = await asyncio.gather(read_until(a, b"42"), read_until(b, b"42"))
    assert b"42" in out_a and b"42" in out_b
    await a.write(b"exit 4\n")
    await b.write(b"exit 0\n")
    assert await a.wait(10) == 4
    assert await b.wait(10) == 0
    assert await a.read() == b""


async def test_shell_resize_changes_stty_size(client: GuestClient) -> None:
    shell = await client.open_shell(80, 24, command=["/bin/sh"])
    await shell.write(b"stty size\n")
    assert b"24 80" in await read_until(shell, b"24 80")
    await shell.resize(132, 50)
    await shell.write(b"stty size\n")
    assert b"50 132" in await read_until(shell, b"50 132")
    await shell.close()


async def test_shell_is_a_real_tty_with_env(client: GuestClient) -> None:
    shell = await client.open_shell(
        100, 30, env={"NEXUS_T": "yes"}, command="tty; echo $TERM $NEXUS_T; exit 7"
    )
    out = b"".join([chunk async for chunk in shell])
    assert b"/dev/pts/" in out
    assert b"xterm-256color yes" in out
    assert shell.exit_code == 7


async def test_shell_close_hangs_up(client: GuestClient) -> None:
    shell = await client.open_shell(80, 24, command=["/bin/sh"])
    await shell.write(b"echo ready\n")
    await read_until(shell, b"ready\r\n")
    code = await shell.close()
    assert code == 128 + 1  # SIGHUP


# -- one-shot requests --------------------------------------------------------------


async def test_metrics_keys(client: GuestClient) -> None:
    m = await client.metrics()
    for key in (
        "load_avg",
        "mem_total_bytes",
        "mem_available_bytes",
        "disk_total_bytes",
        "disk_free_bytes",
        "disk_used_bytes",
        "uptime_s",
        "time",
        "cpus",
    ):
        assert key in m, key
    assert len(m["load_avg"]) == 3
    assert m["mem_total_bytes"] > m["mem_available_bytes"] > 0
    assert m["disk_total_bytes"] >= m["disk_used_bytes"] > 0
    assert m["uptime_s"] > 0


async def test_reseed_is_refused_to_touch_the_clock_in_tests(client: GuestClient) -> None:
    result = await client.reseed(epoch=time.time(), entropy=os.urandom(64))
    assert result["clock_set"] is False and result["clock_error"] == "disabled"
    assert result["entropy_bytes"] == 64
    assert result["entropy_credited"] is False  # --no-credit-entropy: plain write


async def test_identity_is_validated_and_planned_without_touching_the_machine(
    client: GuestClient,
) -> None:
    before = socket.gethostname()
    res = await client.set_identity(
        hostname="twin-1",
        machine_id="0123456789abcdef0123456789abcdef",
        nics=[{"dev": "eth0", "mac": "52:54:00:AA:BB:CC", "addr": "10.77.0.9",
               "netmask": "255.255.255.0", "gateway": "10.77.0.1"}],
    )  # fmt: skip
    assert res["applied"] is False  # --no-set-identity
    assert res["hostname"] == "twin-1" and res["machine_id"].startswith("0123")
    assert res["nics"] == [
        {"dev": "eth0", "mac": "52:54:00:aa:bb:cc", "cidr": "10.77.0.9/24", "gateway": "10.77.0.1"}
    ]
    assert socket.gethostname() == before
    for bad in (
        {"hostname": "no_underscores"},
        {"machine_id": "xyz"},
        {"nics": [{"dev": "eth0", "mac": "52:54:00:aa:bb", "addr": "10.0.0.1", "netmask": "24"}]},
        {"nics": [{"dev": "eth0", "mac": "52:54:00:aa:bb:cc", "addr": "10.0.0.300",
                   "netmask": "255.255.255.0"}]},
        {"nics": [{"dev": "eth0", "mac": "52:54:00:aa:bb:cc", "addr": "10.0.0.3",
                   "netmask": "255.0.255.0"}]},
        {"nics": [{"dev": "eth0; rm -rf /", "mac": "52:54:00:aa:bb:cc", "addr": "10.0.0.3",
                   "netmask": "255.255.255.0"}]},
    ):  # fmt: skip
        with pytest.raises(GuestRemoteError) as exc:
            await client.set_identity(**bad)  # type: ignore[arg-type]
        assert exc.value.code == "bad_request", bad


async def test_file_write_and_read(client: GuestClient, tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    data = os.urandom(100_000)
    assert await client.write_file(str(target), data, mode=0o600, mkdirs=True) == len(data)
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o600
    assert await client.read_file(str(target)) == data
    assert await client.read_file(str(target), max_bytes=10) == data[:10]
    await client.write_file(str(target), b"tail", append=True)
    assert target.read_bytes().endswith(b"tail")
    with pytest.raises(GuestRemoteError) as info:
        await client.read_file(str(tmp_path / "missing"))
    assert info.value.code == "io_error"


async def test_unknown_op(client: GuestClient) -> None:
    with pytest.raises(GuestRemoteError) as info:
        await client.request("launch_missiles")
    assert info.value.code == "unknown_op"


# -- connection life ----------------------------------------------------------------


async def test_disconnect_kills_streams_and_reconnect_works(agent: Agent) -> None:
    first = await GuestClient.connect(str(agent[1]), timeout=5)
    shell = await first.open_shell(80, 24, command="echo PID=$$; exec sleep 100")
    out = await read_until(shell, b"\r\n")
    pid = int(out.split(b"PID=")[1].split()[0])
    await first.close()
    with pytest.raises(GuestConnectionError):
        await first.exec(["true"])
    deadline = time.monotonic() + 5
    while not pid_gone(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pid_gone(pid), "the shell of a vanished host was not killed"
    second = await GuestClient.connect(str(agent[1]), timeout=5)
    assert (await second.hello())["version"] == 1
    assert (await second.exec(["echo", "again"])).stdout == b"again\n"
    await second.close()


async def test_garbage_input_does_not_crash_the_agent(agent: Agent) -> None:
    proc, path = agent
    hello = encode_frame(FrameType.HELLO, 0, encode_value({"versions": [1], "nonce": 5}))
    reader, writer = await asyncio.open_unix_connection(str(path))
    # random bytes, a lying huge-length header, a bad CRC, a valid frame with a bad value
    writer.write(os.urandom(200_000))
    writer.write(b"NX" + b"\xff" * 30)
    writer.write(encode_frame(FrameType.REQUEST, 3, b"\xffnot a value"))
    writer.write(hello)
    await writer.drain()
    parser = FrameParser()
    got: list[Frame] = []
    async with asyncio.timeout(10):
        while not any(f.type == FrameType.HELLO for f in got):
            got += parser.feed(await reader.read(65536))
    answer = next(f for f in got if f.type == FrameType.HELLO).value()
    assert answer["nonce"] == 5
    writer.write(os.urandom(10_000))  # and hang up mid-garbage
    writer.close()
    await asyncio.sleep(0.2)
    assert proc.poll() is None
    async with await GuestClient.connect(str(path), timeout=5) as c:
        assert (await c.exec(["echo", "alive"])).stdout == b"alive\n"


async def test_protocol_errors_are_reported(agent: Agent) -> None:
    reader, writer = await asyncio.open_unix_connection(str(agent[1]))
    parser = FrameParser()

    async def roundtrip(data: bytes) -> Frame:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            while True:
                frames = parser.feed(await reader.read(65536))
                if frames:
                    return frames[0]

    req = encode_value({"op": "metrics"})
    err = await roundtrip(encode_frame(FrameType.REQUEST, 1, req))
    assert (err.type, err.value()["code"]) == (FrameType.ERROR, "handshake_required")
    err = await roundtrip(encode_frame(FrameType.HELLO, 0, encode_value({"versions": [99]})))
    assert (err.type, err.value()["code"]) == (FrameType.ERROR, "version_mismatch")
    ok = await roundtrip(encode_frame(FrameType.HELLO, 0, encode_value({"versions": [1, 99]})))
    assert ok.type == FrameType.HELLO and ok.value()["version"] == 1
    err = await roundtrip(encode_frame(FrameType.REQUEST, 2, b"\x00garbage"))
    assert (err.type, err.stream, err.value()["code"]) == (FrameType.ERROR, 2, "bad_request")
    err = await roundtrip(encode_frame(FrameType.REQUEST, 0, req))
    assert err.value()["code"] == "bad_stream"
    pong = await roundtrip(encode_frame(FrameType.PING, 0, b"abc"))
    assert pong == Frame(FrameType.PONG, 0, b"abc")
    writer.close()


async def test_fd_transport_serves_one_session() -> None:
    """``--fd N``: an inherited socket (here one end of a socketpair)."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus.guest.agent", "--fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        env=agent_env(),
        stdout=subprocess.DEVNULL,
    )
    theirs.close()
    try:
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        client = GuestClient(reader, writer)
        assert (await client.exec(["echo", "fd"])).stdout == b"fd\n"
        await client.close()
        assert await asyncio.to_thread(proc.wait, 10) == 0  # EOF ends the agent
    finally:
        if proc.poll() is None:
            proc.kill()


def test_port_transport_over_a_pty_survives_hangup() -> None:
    """``--port DEV``: the virtio-serial code path, with a raw PTY standing in for the port.

    The PTY master plays the host; closing it looks like a host disconnect (POLLHUP/EIO on
    the device). The agent must answer HELLO, then outlive the hangup without spinning.
    """
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus.guest.agent", "--port", os.ttyname(slave)],
        env=agent_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        hello = encode_frame(FrameType.HELLO, 0, encode_value({"versions": [1], "nonce": 9}))
        parser = FrameParser()
        got: list[Frame] = []
        deadline = time.monotonic() + 10
        sent_at = 0.0
        while not got and time.monotonic() < deadline:
            if time.monotonic() - sent_at > 0.5:  # the agent may not have opened it yet
                os.write(master, hello)
                sent_at = time.monotonic()
            if select.select([master], [], [], 0.1)[0]:
                got += parser.feed(os.read(master, 65536))
        assert got and got[0].type == FrameType.HELLO and got[0].value()["nonce"] == 9
        os.close(master)
        master = -1

        def cpu() -> float:
            with open(f"/proc/{proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu()
        time.sleep(1.0)
        assert proc.poll() is None, "agent died when the host hung up"
        assert cpu() - before < 0.3, "agent spins while the host is away"
    finally:
        if master >= 0:
            os.close(master)
        os.close(slave)
        proc.kill()
        proc.wait()


async def test_resent_hello_keeps_streams_new_hello_resets(agent: Agent) -> None:
    reader, writer = await asyncio.open_unix_connection(str(agent[1]))
    parser = FrameParser()
    pending: list[Frame] = []

    async def expect(ftype: int) -> Frame:
        # frames of other types stay queued: EXIT may arrive before the HELLO answer
        async with asyncio.timeout(10):
            while True:
                for i, frame in enumerate(pending):
                    if frame.type == ftype:
                        return pending.pop(i)
                pending.extend(parser.feed(await reader.read(65536)))

    def hello(nonce: int) -> bytes:
        return encode_frame(FrameType.HELLO, 0, encode_value({"versions": [1], "nonce": nonce}))

    writer.write(hello(1))
    await expect(FrameType.HELLO)
    writer.write(
        encode_frame(FrameType.REQUEST, 5, encode_value({"op": "exec", "argv": ["sleep", "30"]}))
    )
    pid = (await expect(FrameType.RESPONSE)).value()["pid"]
    writer.write(hello(1))  # a retry of the same handshake
    assert (await expect(FrameType.HELLO)).value()["nonce"] == 1
    await asyncio.sleep(0.2)
    assert not pid_gone(pid)
    writer.write(hello(2))  # a new host session
    await expect(FrameType.HELLO)
    exit_frame = await expect(FrameType.EXIT)
    assert exit_frame.stream == 5 and exit_frame.value()["signal"] == 9
    assert pid_gone(pid)
    writer.close()


def test_pump_survives_a_spurious_wakeup(monkeypatch: pytest.MonkeyPatch) -> None:
    """select() may call a non-blocking PTY readable before its data lands (EAGAIN):
    the output pump must keep going, not end the stream's output for good."""
    from nexus.guest import streams

    sent: list[bytes] = []

    class FakeSession:
        def send(self, ftype: int, sid: int, payload: bytes = b"", flags: int = 0) -> None:
            sent.append(payload)

    r, w = os.pipe()
    os.set_blocking(r, False)
    real_read = os.read
    calls = {"n": 0}

    def flaky_read(fd: int, n: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 1:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_read(fd, n)

    monkeypatch.setattr(streams.os, "read", flaky_read)
    stream = streams.Stream(FakeSession(), 1)  # type: ignore[arg-type]
    os.write(w, b"before")
    os.close(w)
    try:
        stream.pump(r, FrameType.STDOUT, None, {})
    finally:
        os.close(r)
    assert calls["n"] >= 2
    assert b"".join(sent) == b"before"
