"""The Nexus guest agent: serves the host over virtio-serial, vsock or a test socket.

Run inside the guest as ``PYTHONPATH=/opt/nexus/lib python3 -m nexus.guest.agent``.

Runs on Debian's ``python3-minimal`` (``libpython3.11-minimal``), so it uses only modules
that package ships: no ``json`` (values use :mod:`nexus.guest.protocol`'s own encoding), no
``pty``/``termios``/``tty`` (``os.openpty`` plus raw ioctl numbers), no ``queue``,
``shutil``, ``dataclasses`` or ``shlex``. ``tests/unit/guest`` checks the imports.

Design: one thread reads the channel and dispatches frames; every stream (an exec or a
shell) has its own small threads (output pumps, a stdin writer, a waiter) that send frames
through the session's locked writer. One-shot requests (metrics, reseed, files) are answered
inline. When the host goes away, every stream of that session is killed and the agent
waits for the next host connection, which starts with a HELLO.

Transports, chosen automatically unless a flag forces one:

* QEMU: the virtio-serial port whose ``/sys/class/virtio-ports/*/name`` is ``nexus.agent``
  (``/dev/vportNpM``; there is no udev). A host disconnect shows as EOF/POLLHUP; the agent
  then polls until the host is back.
* Firecracker: an ``AF_VSOCK`` listening socket on port 1024; one session per connection.
* Tests: ``--listen-unix PATH`` (like vsock, one session per connection) or ``--fd N`` (an
  inherited connected socket: one session, then exit).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

from nexus.guest.protocol import (
    FLAG_EOF,
    MAX_PAYLOAD,
    PROTOCOL_VERSIONS,
    Frame,
    FrameParser,
    FrameType,
    ProtocolError,
    choose_version,
    encode_frame,
    encode_value,
)

AGENT_VERSION = "0.1.0"
READY_MARKER = "NEXUS-GUEST-READY"
PORT_NAME = "nexus.agent"
VSOCK_PORT = 1024
CHUNK = 64 * 1024
#: Largest ``file_read`` answer (leaves room for the rest of the RESPONSE value).
MAX_FILE_BYTES = MAX_PAYLOAD - 4096
MAX_OUTPUT_LIMIT = 1 << 30
EXIT_GRACE_S = 1.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Linux ioctl numbers (x86_64, aarch64): termios/pty/random are not in python3-minimal.
TIOCSWINSZ = 0x5414
TIOCSCTTY = 0x540E
RNDADDENTROPY = 0x40085203

OPS = ("exec", "shell", "metrics", "reseed", "identity", "file_read", "file_write")


def log(msg: str) -> None:
    """Write one diagnostic line to stderr (the console in a guest)."""
    try:
        sys.stderr.write(f"nexus-guest-agent: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Disconnected(Exception):
    """The host side of the channel went away."""


class RequestError(Exception):
    """A request failed in a way reported to the host as an ERROR frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------
# Channel: a non-blocking fd (virtio port or socket) with a locked writer
# ---------------------------------------------------------------------------------------


class Channel:
    """A bidirectional byte channel over one non-blocking file descriptor."""

    def __init__(self, fd: int, owns: bool = True) -> None:
        self.fd = fd
        self.owns = owns
        self.closed = False
        self._wlock = threading.Lock()
        os.set_blocking(fd, False)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLPRI)

    def recv(self, timeout: float) -> bytes | None:
        """Bytes read, ``b""`` when the host went away, or None on timeout."""
        if self.closed:
            return b""
        try:
            events = self._poll.poll(int(timeout * 1000))
        except InterruptedError:
            return None
        if not events:
            return None
        ev = events[0][1]
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            if ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return b""
            return None
        except OSError:
            return b""
        return data

    def send_all(self, data: bytes, valid: Any = None) -> None:
        """Write every byte or raise :class:`Disconnected`.

        ``valid`` is an optional callable checked between writes; once it returns False
        (the session that owns the write has ended) the write is abandoned.
        """
        with self._wlock:
            view = memoryview(data)
            wpoll = None
            while view:
                if self.closed or (valid is not None and not valid()):
                    raise Disconnected()
                try:
                    n = os.write(self.fd, view)
                except BlockingIOError:
                    n = 0
                except OSError as exc:
                    raise Disconnected() from exc
                view = view[n:]
                if view:
                    if wpoll is None:
                        wpoll = select.poll()
                        wpoll.register(self.fd, select.POLLOUT)
                    events = wpoll.poll(1000)
                    ev = events[0][1] if events else 0
                    if ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) and not (
                        ev & select.POLLOUT
                    ):
                        raise Disconnected()

    def host_present(self) -> bool:
        """False while poll reports POLLHUP without pending data (virtio: no host)."""
        try:
            events = self._poll.poll(0)
        except InterruptedError:
            return False
        ev = events[0][1] if events else 0
        if ev & select.POLLIN:
            return True
        return not ev & (select.POLLHUP | select.POLLERR)

    def close(self) -> None:
        """Stop using the channel (closes the fd if owned)."""
        self.closed = True
        if self.owns:
            try:
                os.close(self.fd)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def _exit_code(rc: int) -> tuple[int, int | None]:
    """Map a Popen return code to (shell-style exit code, signal or None)."""
    if rc < 0:
        return 128 - rc, -rc
    return rc, None


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _make_ctty() -> None:  # runs in the child, after setsid and the fd dups
    fcntl.ioctl(0, TIOCSCTTY, 0)


def _read_file(path: str, limit: int = 65536) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise RequestError("bad_request", f"{what} must be a list of strings")
    return list(value)


def _child_env(extra: Any, defaults: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", "/root")
    if defaults:
        for key, val in defaults.items():
            env.setdefault(key, val)
    if extra is None:
        return env
    if not isinstance(extra, dict):
        raise RequestError("bad_request", "env must be a map of strings")
    for key, val in extra.items():
        if not isinstance(val, str) or "=" in key or not key or "\0" in key + val:
            raise RequestError("bad_request", f"bad env entry {key!r}")
        env[key] = val
    return env


def _opt_str(args: dict[str, Any], key: str) -> str | None:
    val = args.get(key)
    if val is not None and not isinstance(val, str):
        raise RequestError("bad_request", f"{key} must be a string")
    return val


def _opt_num(args: dict[str, Any], key: str, default: float | None) -> float | None:
    val = args.get(key, default)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise RequestError("bad_request", f"{key} must be a number")
    return float(val)


def boot_time() -> float:
    """Boot time as a Unix epoch (from /proc/stat ``btime``)."""
    for line in _read_file("/proc/stat", 1 << 20).splitlines():
        if line.startswith("btime "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                break
    return time.time() - uptime()


def uptime() -> float:
    """Seconds since boot (``/proc/uptime``), or monotonic time as a fallback."""
    try:
        return float(_read_file("/proc/uptime").split()[0])
    except (IndexError, ValueError):
        return time.monotonic()


def facts() -> dict[str, Any]:
    """Facts about this guest, sent in the HELLO answer."""
    uname = os.uname()
    pretty = ""
    for line in _read_file("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            pretty = line.split("=", 1)[1].strip().strip('"')
    return {
        "agent_version": AGENT_VERSION,
        "hostname": uname.nodename,
        "kernel": uname.release,
        "arch": uname.machine,
        "os": pretty,
        "boot_time": boot_time(),
        "uptime_s": uptime(),
        "time": time.time(),
        "pid": os.getpid(),
        "python": ".".join(str(v) for v in sys.version_info[:3]),
        "ops": list(OPS),
        "max_payload": MAX_PAYLOAD,
    }


def metrics() -> dict[str, Any]:
    """Load, memory, root disk usage and uptime of the guest."""
    mem: dict[str, int] = {}
    for line in _read_file("/proc/meminfo").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            try:
                mem[parts[0][:-1]] = int(parts[1]) * 1024
            except ValueError:
                continue
    try:
        load = list(os.getloadavg())
    except OSError:
        load = [0.0, 0.0, 0.0]
    result: dict[str, Any] = {
        "time": time.time(),
        "uptime_s": uptime(),
        "load_avg": load,
        "cpus": os.cpu_count() or 1,
        "mem_total_bytes": mem.get("MemTotal", 0),
        "mem_available_bytes": mem.get("MemAvailable", mem.get("MemFree", 0)),
        "mem_free_bytes": mem.get("MemFree", 0),
        "swap_total_bytes": mem.get("SwapTotal", 0),
        "swap_free_bytes": mem.get("SwapFree", 0),
    }
    try:
        st = os.statvfs("/")
        total = st.f_blocks * st.f_frsize
        result["disk_total_bytes"] = total
        result["disk_free_bytes"] = st.f_bavail * st.f_frsize
        result["disk_used_bytes"] = total - st.f_bfree * st.f_frsize
    except OSError:
        result["disk_total_bytes"] = result["disk_free_bytes"] = result["disk_used_bytes"] = 0
    try:
        result["procs"] = sum(1 for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        result["procs"] = 0
    return result


# ---------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------


class StdinWriter(threading.Thread):
    """Writes host-supplied STDIN chunks to an fd it owns without stalling the reader.

    The fd is closed when the thread ends: after EOF (exec pipes), a broken pipe, or
    :meth:`stop`. Writes wait for writability in short slices so stop() is always seen.
    """

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True, name=f"stdin-{fd}")
        self.fd = fd
        os.set_blocking(fd, False)
        self._chunks: deque[bytes | None] = deque()
        self._cond = threading.Condition()
        self._stopped = False

    def put(self, data: bytes, eof: bool) -> None:
        """Queue ``data``; ``eof`` closes the fd after it."""
        with self._cond:
            if self._stopped:
                return
            if data:
                self._chunks.append(data)
            if eof:
                self._chunks.append(None)
            self._cond.notify()

    def stop(self) -> None:
        """Drop queued data and end the thread."""
        with self._cond:
            self._stopped = True
            self._chunks.clear()
            self._cond.notify()

    def _write(self, chunk: bytes) -> bool:
        view = memoryview(chunk)
        while view:
            if self._stopped:
                return False
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                try:
                    select.select([], [self.fd], [], 0.25)
                except (OSError, ValueError):
                    return False
            except OSError:
                return False
        return True

    def run(self) -> None:
        """Write chunks until EOF, a broken pipe, or stop()."""
        try:
            while True:
                with self._cond:
                    while not self._chunks and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        break
                    chunk = self._chunks.popleft()
                if chunk is None or not self._write(chunk):
                    break
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass


class Stream:
    """Base class of a long-lived stream (exec or shell) inside one session."""

    def __init__(self, session: Session, sid: int) -> None:
        self.session = session
        self.sid = sid
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdin: StdinWriter | None = None
        self.abandon = threading.Event()
        self.closed_by_host = False

    def send(self, ftype: int, payload: bytes = b"", flags: int = 0) -> None:
        """Send a frame on this stream (silently dropped once the host is gone)."""
        self.session.send(ftype, self.sid, payload, flags)

    def on_stdin(self, data: bytes, eof: bool) -> None:
        """Host STDIN frame."""
        if self.stdin is not None:
            self.stdin.put(data, eof)

    def on_resize(self, value: Any) -> None:
        """Host RESIZE frame (only shells care)."""

    def on_close(self) -> None:
        """Host CLOSE frame: end the stream by killing its processes."""
        self.closed_by_host = True
        self.kill()

    def kill(self) -> None:
        """Kill the stream's process group."""
        if self.proc is not None:
            _killpg(self.proc.pid, signal.SIGKILL)

    def pump(self, fd: int, ftype: int, limit: int | None, counts: dict[str, int]) -> None:
        """Forward ``fd`` to the host as ``ftype`` frames until EOF or abandon."""
        key = FrameType.name(ftype)
        sent = 0
        while not self.abandon.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.25)
            except (OSError, ValueError):
                break
            if not ready:
                continue
            try:
                data = os.read(fd, CHUNK)
            except (BlockingIOError, InterruptedError):
                # A shell's PTY master shares its (non-blocking) file description with
                # the StdinWriter's dup, and a pty can poll readable before its data
                # lands: a spurious wake-up, not the end of the output.
                continue
            except OSError:  # EIO: pty slave closed
                break
            if not data:
                break
            counts[key] = counts.get(key, 0) + len(data)
            if limit is not None:
                room = max(0, limit - sent)
                if len(data) > room:
                    counts["truncated"] = 1
                    data = data[:room]
            if data:
                sent += len(data)
                self.send(ftype, data)

    def finish(self) -> None:
        """Forget the stream in its session."""
        if self.stdin is not None:
            self.stdin.stop()
        self.session.forget(self.sid, self)


class ExecStream(Stream):
    """A non-interactive command: pipes, a timeout on the process group, an output cap."""

    def start(self, args: dict[str, Any]) -> None:
        """Spawn the command; raises RequestError if the request or the spawn is bad."""
        argv = _str_list(args.get("argv"), "argv")
        if not argv:
            raise RequestError("bad_request", "argv must not be empty")
        env = _child_env(args.get("env"))
        cwd = _opt_str(args, "cwd")
        timeout = _opt_num(args, "timeout_s", None)
        limit_f = _opt_num(args, "max_output", None)
        limit = None if limit_f is None else int(min(max(limit_f, 0), MAX_OUTPUT_LIMIT))
        want_stdin = bool(args.get("stdin", False))
        started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if want_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise RequestError("spawn_failed", f"cannot run {argv[0]!r}: {exc}") from None
        self.session.agent.track(self.proc.pid)
        if want_stdin and self.proc.stdin is not None:
            fd = os.dup(self.proc.stdin.fileno())
            self.proc.stdin.close()
            self.stdin = StdinWriter(fd)
            self.stdin.start()
        self.send(FrameType.RESPONSE, encode_value({"pid": self.proc.pid}))
        threading.Thread(
            target=self._wait, args=(started, timeout, limit), daemon=True, name="exec-wait"
        ).start()

    def _wait(self, started: float, timeout: float | None, limit: int | None) -> None:
        proc = self.proc
        if proc is None or proc.stdout is None or proc.stderr is None:
            return
        counts: dict[str, int] = {}
        pumps = [
            threading.Thread(
                target=self.pump,
                args=(proc.stdout.fileno(), FrameType.STDOUT, limit, counts),
                daemon=True,
            ),
            threading.Thread(
                target=self.pump,
                args=(proc.stderr.fileno(), FrameType.STDERR, limit, counts),
                daemon=True,
            ),
        ]
        for t in pumps:
            t.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout if timeout and timeout > 0 else None)
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        if timed_out or self.closed_by_host:
            _killpg(proc.pid, signal.SIGKILL)
        # Output still buffered in the pipes is delivered; a daemon that escaped the
        # process group and keeps the pipes open is cut off after a short grace.
        deadline = time.monotonic() + EXIT_GRACE_S
        for t in pumps:
            t.join(max(0.0, deadline - time.monotonic()))
        self.abandon.set()
        for t in pumps:
            t.join()
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()
        self.session.agent.untrack(proc.pid)
        code, sig = _exit_code(rc)
        self.send(
            FrameType.EXIT,
            encode_value(
                {
                    "exit_code": code,
                    "signal": sig,
                    "duration_ms": int((time.monotonic() - started) * 1000),
                    "timed_out": timed_out,
                    "truncated": bool(counts.get("truncated")),
                    "stdout_bytes": counts.get("STDOUT", 0),
                    "stderr_bytes": counts.get("STDERR", 0),
                }
            ),
        )
        self.finish()


class ShellStream(Stream):
    """An interactive command on a pseudo-terminal."""

    master = -1

    def start(self, args: dict[str, Any]) -> None:
        """Open a PTY and spawn the shell (or ``argv``) on it."""
        argv = args.get("argv")
        if argv is None:
            shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
            argv = [shell]
        argv = _str_list(argv, "argv")
        if not argv:
            raise RequestError("bad_request", "argv must not be empty")
        rows, cols = self._size(args)
        env = _child_env(args.get("env"), {"TERM": "xterm-256color"})
        cwd = _opt_str(args, "cwd")
        if cwd is None and os.path.isdir(env.get("HOME", "")):
            cwd = env["HOME"]
        master, slave = os.openpty()
        try:
            _set_winsize(master, rows, cols)
            self.proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_make_ctty,
                close_fds=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            os.close(master)
            raise RequestError("spawn_failed", f"cannot run {argv[0]!r}: {exc}") from None
        finally:
            os.close(slave)
        self.master = master
        self.session.agent.track(self.proc.pid)
        self.stdin = StdinWriter(os.dup(master))
        self.stdin.start()
        self.send(FrameType.RESPONSE, encode_value({"pid": self.proc.pid}))
        threading.Thread(target=self._wait, daemon=True, name="shell-wait").start()

    @staticmethod
    def _size(args: Any) -> tuple[int, int]:
        rows = args.get("rows", 24)
        cols = args.get("cols", 80)
        for val in (rows, cols):
            if isinstance(val, bool) or not isinstance(val, int) or not 0 < val < 65536:
                raise RequestError("bad_request", "rows/cols must be integers in 1..65535")
        return rows, cols

    def on_resize(self, value: Any) -> None:
        """Apply a new window size; the kernel sends SIGWINCH to the foreground group."""
        try:
            rows, cols = self._size(value if isinstance(value, dict) else {})
            _set_winsize(self.master, rows, cols)
        except (RequestError, OSError) as exc:
            self.send(FrameType.ERROR, encode_value({"code": "bad_resize", "message": str(exc)}))

    def on_stdin(self, data: bytes, eof: bool) -> None:
        """Keystrokes for the terminal (EOF is ignored: send ^D to end input)."""
        if self.stdin is not None and data:
            self.stdin.put(data, False)

    def on_close(self) -> None:
        """Hang up the terminal's session, then kill it if it lingers."""
        self.closed_by_host = True
        proc = self.proc
        if proc is None:
            return
        _killpg(proc.pid, signal.SIGHUP)
        _killpg(proc.pid, signal.SIGCONT)
        timer = threading.Timer(2.0, _killpg, args=(proc.pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    def _wait(self) -> None:
        proc = self.proc
        if proc is None:
            return
        reader = threading.Thread(
            target=self.pump, args=(self.master, FrameType.STDOUT, None, {}), daemon=True
        )
        reader.start()
        rc = proc.wait()
        reader.join(EXIT_GRACE_S)
        self.abandon.set()
        reader.join()
        self.session.agent.untrack(proc.pid)
        if self.stdin is not None:
            self.stdin.stop()
        try:
            os.close(self.master)
        except OSError:
            pass
        code, sig = _exit_code(rc)
        self.send(FrameType.EXIT, encode_value({"exit_code": code, "signal": sig}))
        self.finish()


# ---------------------------------------------------------------------------------------
# Session: one host connection
# ---------------------------------------------------------------------------------------


class Session:
    """One host connection: handshake state, open streams, the frame dispatcher."""

    def __init__(self, agent: Agent, chan: Channel) -> None:
        self.agent = agent
        self.chan = chan
        self.version: int | None = None
        self.nonce: Any = None
        self.streams: dict[int, Stream] = {}
        self._lock = threading.Lock()
        self.alive = True

    # -- sending --------------------------------------------------------------------
    def send(self, ftype: int, sid: int, payload: bytes = b"", flags: int = 0) -> None:
        """Send one frame; a vanished host is noted, not raised."""
        if not self.alive:
            return
        try:
            self.chan.send_all(encode_frame(ftype, sid, payload, flags), self._is_alive)
        except Disconnected:
            self.alive = False

    def _is_alive(self) -> bool:
        return self.alive

    def send_value(self, ftype: int, sid: int, value: Any) -> None:
        """Send a control frame carrying ``value``."""
        self.send(ftype, sid, encode_value(value))

    def send_error(self, sid: int, code: str, message: str) -> None:
        """Send an ERROR frame."""
        self.send_value(FrameType.ERROR, sid, {"code": code, "message": message})

    # -- stream table ---------------------------------------------------------------
    def forget(self, sid: int, stream: Stream) -> None:
        """Remove a finished stream."""
        with self._lock:
            if self.streams.get(sid) is stream:
                del self.streams[sid]

    def kill_all(self) -> None:
        """Kill every stream (host gone, or a new HELLO)."""
        with self._lock:
            streams = list(self.streams.values())
            self.streams.clear()
        for st in streams:
            st.closed_by_host = True
            st.kill()

    # -- main loop ------------------------------------------------------------------
    def run(self) -> None:
        """Read and dispatch frames until the host goes away."""
        parser = FrameParser()
        try:
            while self.alive and not self.agent.stopping:
                data = self.chan.recv(1.0)
                if data is None:
                    continue
                if not data:
                    break
                before = parser.discarded
                for frame in parser.feed(data):
                    self.dispatch(frame)
                if parser.discarded != before:
                    log(f"skipped {parser.discarded - before} bytes of garbage")
        finally:
            self.alive = False
            self.kill_all()

    def dispatch(self, frame: Frame) -> None:
        """Handle one frame; never raises."""
        try:
            self._dispatch(frame)
        except RequestError as exc:
            self.send_error(frame.stream, exc.code, exc.message)
        except ProtocolError as exc:
            self.send_error(frame.stream, "bad_request", str(exc))
        except Exception as exc:  # a bug must not take the agent down
            log(f"internal error on {frame.describe()}: {exc!r}")
            self.send_error(frame.stream, "internal", f"{type(exc).__name__}: {exc}")

    def _dispatch(self, frame: Frame) -> None:
        ftype, sid = frame.type, frame.stream
        if ftype == FrameType.PING:
            self.send(FrameType.PONG, sid, frame.payload)
            return
        if ftype == FrameType.PONG:
            return
        if ftype == FrameType.HELLO:
            self._hello(frame)
            return
        if self.version is None:
            raise RequestError("handshake_required", "send HELLO first")
        if ftype == FrameType.REQUEST:
            if sid == 0:
                raise RequestError("bad_stream", "requests need a stream id > 0")
            self._request(sid, frame.value())
            return
        with self._lock:
            stream = self.streams.get(sid)
        if ftype in (FrameType.STDIN, FrameType.RESIZE, FrameType.CLOSE):
            if stream is None:
                return  # the stream just ended; late frames are dropped
            if ftype == FrameType.STDIN:
                stream.on_stdin(frame.payload, bool(frame.flags & FLAG_EOF))
            elif ftype == FrameType.RESIZE:
                stream.on_resize(frame.value())
            else:
                stream.on_close()
            return
        if ftype == FrameType.ERROR:
            log(f"host reported an error on stream {sid}")
            return
        raise RequestError("unsupported_frame", f"unexpected {FrameType.name(ftype)} frame")

    def _hello(self, frame: Frame) -> None:
        value = frame.value()
        if not isinstance(value, dict):
            raise RequestError("bad_request", "HELLO payload must be a map")
        version = choose_version(value.get("versions"))
        if version is None:
            self.send_value(
                FrameType.ERROR,
                frame.stream,
                {
                    "code": "version_mismatch",
                    "message": "no common protocol version",
                    "versions": list(PROTOCOL_VERSIONS),
                },
            )
            return
        # A HELLO with a new nonce starts a new session: streams of an earlier host are
        # ended. A re-sent HELLO (same nonce: the host retries while the guest boots) is
        # only answered again, so it cannot kill streams the host has just opened.
        nonce = value.get("nonce")
        if self.version is None or nonce is None or nonce != self.nonce:
            self.kill_all()
        self.nonce = nonce
        self.version = version
        answer = facts()
        answer["version"] = version
        answer["versions"] = list(PROTOCOL_VERSIONS)
        answer["nonce"] = value.get("nonce")
        self.send_value(FrameType.HELLO, frame.stream, answer)

    def _request(self, sid: int, args: Any) -> None:
        if not isinstance(args, dict) or not isinstance(args.get("op"), str):
            raise RequestError("bad_request", "REQUEST payload must be a map with an 'op'")
        op = args["op"]
        with self._lock:
            if sid in self.streams:
                raise RequestError("stream_in_use", f"stream {sid} is already open")
        if op in ("exec", "shell"):
            stream: Stream = ExecStream(self, sid) if op == "exec" else ShellStream(self, sid)
            with self._lock:
                self.streams[sid] = stream
            try:
                stream.start(args)  # type: ignore[attr-defined]
            except BaseException:
                self.forget(sid, stream)
                raise
            return
        handler = {
            "metrics": lambda a: metrics(),
            "reseed": self.agent.reseed,
            "identity": self.agent.identity,
            "file_read": file_read,
            "file_write": file_write,
        }.get(op)
        if handler is None:
            raise RequestError("unknown_op", f"unknown op {op!r}")
        self.send_value(FrameType.RESPONSE, sid, handler(args))


_HOSTNAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def identity_plan(args: dict[str, Any]) -> dict[str, Any]:
    """The validated ``identity`` request (see :meth:`Agent.identity`)."""
    plan: dict[str, Any] = {}
    hostname = _opt_str(args, "hostname")
    if hostname is not None:
        if not 0 < len(hostname) <= 63 or not set(hostname) <= _HOSTNAME_OK:
            raise RequestError("bad_request", "hostname: 1-63 letters, digits or '-'")
        plan["hostname"] = hostname
    machine_id = _opt_str(args, "machine_id")
    if machine_id is not None:
        if len(machine_id) != 32 or not set(machine_id) <= set("0123456789abcdef"):
            raise RequestError("bad_request", "machine_id: 32 lower-case hex digits")
        plan["machine_id"] = machine_id
    nics = args.get("nics") or []
    if not isinstance(nics, list):
        raise RequestError("bad_request", "nics must be a list")
    out = []
    for nic in nics:
        if not isinstance(nic, dict):
            raise RequestError("bad_request", "each nic must be a map")
        dev = str(nic.get("dev", ""))
        if not dev or len(dev) > 15 or not set(dev) <= _HOSTNAME_OK | {"_", "."}:
            raise RequestError("bad_request", f"bad interface name {dev!r}")
        mac = str(nic.get("mac", "")).lower()
        parts = mac.split(":")
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise RequestError("bad_request", f"bad MAC address {mac!r}")
        try:
            int(mac.replace(":", ""), 16)
            addr = _ipv4(nic.get("addr"))
            prefix = _prefix_of(nic.get("netmask"))
            gateway = _ipv4(nic["gateway"]) if nic.get("gateway") else ""
        except (ValueError, TypeError) as exc:
            raise RequestError("bad_request", f"nic {dev}: {exc}") from None
        out.append({"dev": dev, "mac": mac, "cidr": f"{addr}/{prefix}", "gateway": gateway})
    if out:
        plan["nics"] = out
    return plan


def _ipv4(value: Any) -> str:
    """A dotted-quad IPv4 address, normalised (python3-minimal has no ``ipaddress``)."""
    parts = str(value).split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
        raise ValueError(f"{str(value)[:40]!r} is not an IPv4 address")
    return ".".join(str(int(p)) for p in parts)


def _prefix_of(netmask: Any) -> int:
    """The prefix length of a dotted-quad netmask (contiguous ones only)."""
    n = 0
    for p in _ipv4(netmask).split("."):
        n = n << 8 | int(p)
    prefix = bin(n).count("1")
    if n != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        raise ValueError(f"{netmask!r} is not a netmask")
    return prefix


def _write_text(path: str, text: str, mode: int = 0o644) -> None:
    tmp = f"{path}.nexus-tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _apply_nic(nic: dict[str, Any]) -> dict[str, Any]:
    """New MAC + address (+ default route) on one interface, with busybox ``ip``."""
    bb = "/usr/local/bin/busybox"
    ip = [bb, "ip"] if os.path.exists(bb) else ["ip"]
    dev = nic["dev"]
    steps = [
        [*ip, "link", "set", "dev", dev, "down"],
        [*ip, "link", "set", "dev", dev, "address", nic["mac"]],
        [*ip, "link", "set", "dev", dev, "up"],
        [*ip, "-4", "addr", "flush", "dev", dev],
        [*ip, "addr", "add", nic["cidr"], "dev", dev],
    ]
    if nic["gateway"]:
        steps.append([*ip, "route", "replace", "default", "via", nic["gateway"], "dev", dev])
    for argv in steps:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return {"ok": False, "error": f"{' '.join(argv[-4:])}: {exc}"}
        if res.returncode != 0:
            return {"ok": False, "error": f"{' '.join(argv[1:])}: {res.stderr.strip()[:200]}"}
    return {"ok": True}


def file_read(args: dict[str, Any]) -> dict[str, Any]:
    """Read up to ``max_bytes`` (default and cap: MAX_FILE_BYTES) of a file."""
    path = _opt_str(args, "path")
    if not path:
        raise RequestError("bad_request", "path is required")
    limit = int(_opt_num(args, "max_bytes", MAX_FILE_BYTES) or 0)
    limit = max(0, min(limit, MAX_FILE_BYTES))
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.read(limit + 1)
    except OSError as exc:
        raise RequestError("io_error", f"{path}: {exc.strerror or exc}") from None
    return {
        "data": data[:limit],
        "truncated": len(data) > limit,
        "size": max(size, len(data[:limit])),
    }


def file_write(args: dict[str, Any]) -> dict[str, Any]:
    """Write ``data`` to ``path`` (atomically by rename unless ``append``)."""
    path = _opt_str(args, "path")
    data = args.get("data", b"")
    if not path or not isinstance(data, bytes):
        raise RequestError("bad_request", "path (str) and data (bytes) are required")
    mode = args.get("mode", 0o644)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise RequestError("bad_request", "mode must be an int permission mask")
    try:
        if args.get("mkdirs"):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if args.get("append"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
            target = None
        else:
            target = f"{path}.nexus-tmp-{os.getpid()}"
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if target is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        if target is not None:
            os.rename(target, path)
    except OSError as exc:
        raise RequestError("io_error", f"{path}: {exc.strerror or exc}") from None
    return {"written": len(data)}


# ---------------------------------------------------------------------------------------
# Agent: transports, readiness, process tracking
# ---------------------------------------------------------------------------------------


class Agent:
    """Process-wide state: options, live process groups, the serving loops."""

    def __init__(
        self,
        ready_to: list[str] | None = None,
        set_clock: bool = True,
        credit_entropy: bool = True,
        set_identity: bool = True,
    ) -> None:
        self.ready_to = ready_to if ready_to is not None else ["/dev/console", "/dev/kmsg"]
        self.set_clock = set_clock
        self.credit_entropy = credit_entropy
        self.set_identity = set_identity
        self.stopping = False
        self._pids: set[int] = set()
        self._lock = threading.Lock()
        self._announced = False

    def track(self, pid: int) -> None:
        """Remember a child's process group (killed if the agent is stopped)."""
        with self._lock:
            self._pids.add(pid)

    def untrack(self, pid: int) -> None:
        """Forget a process group."""
        with self._lock:
            self._pids.discard(pid)

    def kill_children(self) -> None:
        """Kill every tracked process group."""
        with self._lock:
            pids = list(self._pids)
        for pid in pids:
            _killpg(pid, signal.SIGKILL)

    def announce_ready(self) -> None:
        """Print the readiness marker once (console, else kmsg; ``-`` = stdout)."""
        if self._announced:
            return
        self._announced = True
        line = f"{READY_MARKER} {AGENT_VERSION}\n"
        for target in self.ready_to:
            try:
                if target == "-":
                    sys.stdout.write(line)
                    sys.stdout.flush()
                    return
                fd = os.open(target, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
                return
            except OSError:
                continue

    def identity(self, args: dict[str, Any]) -> dict[str, Any]:
        """Take on a new identity after a memory restore into a new VM (clone uniqueness):
        ``hostname``, ``machine_id`` (32 hex digits) and, per NIC, ``{dev, mac, addr,
        netmask, gateway?}``. Validates everything before changing anything; with
        ``--no-set-identity`` (tests) returns the plan without applying it."""
        plan = identity_plan(args)
        result: dict[str, Any] = {"applied": self.set_identity, **plan}
        if not self.set_identity:
            return result
        if "hostname" in plan:
            socket.sethostname(plan["hostname"])
            _write_text("/etc/hostname", plan["hostname"] + "\n")
        if "machine_id" in plan:
            _write_text("/etc/machine-id", plan["machine_id"] + "\n", 0o444)
            if os.path.isdir("/var/lib/dbus"):
                _write_text("/var/lib/dbus/machine-id", plan["machine_id"] + "\n", 0o444)
        result["nics"] = [dict(nic, **_apply_nic(nic)) for nic in plan.get("nics", [])]
        return result

    def reseed(self, args: dict[str, Any]) -> dict[str, Any]:
        """Set the clock from ``epoch`` and mix ``entropy`` into the kernel pool."""
        epoch = _opt_num(args, "epoch", None)
        entropy = args.get("entropy", b"")
        if not isinstance(entropy, bytes):
            raise RequestError("bad_request", "entropy must be bytes")
        result: dict[str, Any] = {
            "clock_set": False,
            "entropy_bytes": len(entropy),
            "entropy_credited": False,
        }
        if epoch is not None:
            if not self.set_clock:
                result["clock_error"] = "disabled"
            else:
                try:
                    time.clock_settime(time.CLOCK_REALTIME, epoch)
                    result["clock_set"] = True
                except OSError as exc:
                    result["clock_error"] = str(exc)
        if entropy:
            try:
                fd = os.open("/dev/urandom", os.O_WRONLY)
            except OSError as exc:
                raise RequestError("io_error", f"/dev/urandom: {exc}") from None
            try:
                done = False
                if self.credit_entropy:
                    info = struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy
                    try:
                        fcntl.ioctl(fd, RNDADDENTROPY, info)
                        done = result["entropy_credited"] = True
                    except OSError:
                        done = False
                if not done:
                    os.write(fd, entropy)
            finally:
                os.close(fd)
        return result

    # -- transports -----------------------------------------------------------------
    def serve_fd(self, fd: int) -> None:
        """Serve one session on an inherited, connected fd, then return."""
        chan = Channel(fd)
        self.announce_ready()
        try:
            Session(self, chan).run()
        finally:
            chan.close()

    def serve_port(self, path: str) -> None:
        """Serve a virtio-serial port forever, one host session after another."""
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
        chan = Channel(fd)
        self.announce_ready()
        log(f"serving {path}")
        while not self.stopping:
            if not chan.host_present():
                time.sleep(0.1)
                continue
            began = time.monotonic()
            Session(self, chan).run()
            if time.monotonic() - began < 0.2:
                time.sleep(0.1)  # EOF without POLLHUP: do not spin

    def serve_listener(self, sock: socket.socket, what: str) -> None:
        """Accept connections forever; one session thread per connection."""
        sock.listen(8)
        self.announce_ready()
        log(f"listening on {what}")
        while not self.stopping:
            try:
                conn, _addr = sock.accept()
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.5)
                    continue
                raise
            fd = conn.detach()
            threading.Thread(target=self._serve_conn, args=(fd,), daemon=True).start()

    def _serve_conn(self, fd: int) -> None:
        chan = Channel(fd)
        try:
            Session(self, chan).run()
        except Exception as exc:  # one bad session must not end the agent
            log(f"session ended with {exc!r}")
        finally:
            chan.close()


def find_virtio_port(name: str = PORT_NAME, sysfs: str = "/sys/class/virtio-ports") -> str | None:
    """Return ``/dev/<vportNpM>`` whose sysfs ``name`` is ``name``, or None."""
    try:
        entries = sorted(os.listdir(sysfs))
    except OSError:
        return None
    for entry in entries:
        if _read_file(os.path.join(sysfs, entry, "name"), 256).strip() == name:
            dev = os.path.join("/dev", entry)
            if os.path.exists(dev):
                return dev
    return None


def vsock_available() -> bool:
    """True when a virtio vsock device is bound (Firecracker guests)."""
    drv = "/sys/bus/virtio/drivers/vmw_vsock_virtio_transport"
    try:
        return any(name.startswith("virtio") for name in os.listdir(drv))
    except OSError:
        return False


def vsock_listener(port: int) -> socket.socket:
    """An AF_VSOCK socket bound to (any CID, ``port``)."""
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.bind((socket.VMADDR_CID_ANY, port))
    return sock


def unix_listener(path: str) -> socket.socket:
    """An AF_UNIX socket bound at ``path`` (an old socket file is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    return sock


def parse_args(argv: list[str] | None = None) -> Any:
    """Command-line options."""
    import argparse  # ships with python3-minimal; imported late to start fast

    p = argparse.ArgumentParser(prog="python3 -m nexus.guest.agent", description=__doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--port", metavar="DEV", help="virtio-serial device path to use")
    g.add_argument("--vsock-port", type=int, metavar="N", help="listen on AF_VSOCK port N")
    g.add_argument("--listen-unix", metavar="PATH", help="listen on a unix socket (tests)")
    g.add_argument("--fd", type=int, metavar="N", help="serve one connected inherited fd")
    p.add_argument("--port-name", default=PORT_NAME, help="virtio port name to look for")
    p.add_argument(
        "--ready-to",
        action="append",
        metavar="PATH",
        help=f"where to print {READY_MARKER} (repeatable; '-' = stdout); default /dev/console, "
        "then /dev/kmsg",
    )
    p.add_argument("--no-set-clock", action="store_true", help="reseed never sets the clock")
    p.add_argument(
        "--no-credit-entropy",
        action="store_true",
        help="reseed writes entropy without RNDADDENTROPY",
    )
    p.add_argument(
        "--no-set-identity",
        action="store_true",
        help="identity validates and answers the plan without changing the machine",
    )
    p.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for a channel (0 = forever)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: pick a transport and serve until killed."""
    args = parse_args(argv)
    agent = Agent(
        ready_to=args.ready_to,
        set_clock=not args.no_set_clock,
        credit_entropy=not args.no_credit_entropy,
        set_identity=not args.no_set_identity,
    )

    def _stop(signum: int, _frame: Any) -> None:
        agent.stopping = True
        agent.kill_children()
        os._exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # A handler (not SIG_IGN, which children would inherit) so a console hangup is harmless.
    signal.signal(signal.SIGHUP, lambda _s, _f: None)

    if args.fd is not None:
        agent.serve_fd(args.fd)
        return 0
    if args.listen_unix:
        agent.serve_listener(unix_listener(args.listen_unix), args.listen_unix)
        return 0
    if args.vsock_port is not None:
        agent.serve_listener(vsock_listener(args.vsock_port), f"vsock:{args.vsock_port}")
        return 0
    if args.port:
        agent.serve_port(args.port)
        return 0
    deadline = time.monotonic() + args.wait if args.wait > 0 else None
    while deadline is None or time.monotonic() < deadline:
        port = find_virtio_port(args.port_name)
        if port:
            agent.serve_port(port)
            return 0
        if vsock_available():
            agent.serve_listener(vsock_listener(VSOCK_PORT), f"vsock:{VSOCK_PORT}")
            return 0
        time.sleep(0.05)
    log(f"no channel found: no virtio port named {args.port_name} and no vsock device")
    return 1


if __name__ == "__main__":
    sys.exit(main())
