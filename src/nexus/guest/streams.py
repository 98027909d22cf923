"""Streams: the long-lived processes a host REQUEST starts and then talks to frame by frame
(STDIN in; STDOUT/STDERR and one EXIT out) — the :class:`Stream` machinery they share and
the non-interactive one, ``exec``. The PTY shell is in :mod:`nexus.guest.shells`.

Each stream has small threads of its own (output pumps, a stdin writer, a waiter), so the
one thread that reads the channel never blocks on a process; they send frames through the
session's locked writer. A stream's process runs in its own process group, which is what
gets killed: a command's children die with it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Any

from nexus.guest.common import (
    CHUNK,
    RequestError,
    StreamHost,
    exit_code,
    killpg,
    opt_num,
    opt_str,
    str_list,
)
from nexus.guest.protocol import FrameType, encode_value

MAX_OUTPUT_LIMIT = 1 << 30
EXIT_GRACE_S = 1.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def child_env(extra: Any, defaults: dict[str, str] | None = None) -> dict[str, str]:
    """The agent's environment plus ``defaults`` (if unset) plus the request's ``env``."""
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

    def __init__(self, session: StreamHost, sid: int) -> None:
        self.session = session
        self.sid = sid
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdin: StdinWriter | None = None
        self.abandon = threading.Event()
        self.closed_by_host = False

    def start(self, args: dict[str, Any]) -> None:
        """Spawn the stream's process from the REQUEST ``args`` and answer with its pid;
        raises RequestError if the request or the spawn is bad."""
        raise NotImplementedError

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
            killpg(self.proc.pid, signal.SIGKILL)

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
        argv = str_list(args.get("argv"), "argv")
        if not argv:
            raise RequestError("bad_request", "argv must not be empty")
        env = child_env(args.get("env"))
        cwd = opt_str(args, "cwd")
        timeout = opt_num(args, "timeout_s", None)
        limit_f = opt_num(args, "max_output", None)
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
            killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        if timed_out or self.closed_by_host:
            killpg(proc.pid, signal.SIGKILL)
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
        code, sig = exit_code(rc)
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
