"""Interactive shells (the ``shell`` op): a command on a pseudo-terminal, its window size,
and a hang-up when the host closes it.

python3-minimal has no ``pty``, ``tty`` or ``termios``, so the terminal comes from
``os.openpty`` and its ioctls use their raw Linux numbers (the same on x86_64 and aarch64).
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import threading
from typing import Any

from nexus.guest.common import RequestError, exit_code, killpg, opt_str, str_list
from nexus.guest.protocol import FrameType, encode_value
from nexus.guest.streams import EXIT_GRACE_S, StdinWriter, Stream, child_env

TIOCSWINSZ = 0x5414
TIOCSCTTY = 0x540E


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _make_ctty() -> None:  # runs in the child, after setsid and the fd dups
    fcntl.ioctl(0, TIOCSCTTY, 0)


class ShellStream(Stream):
    """An interactive command on a pseudo-terminal."""

    master = -1

    def start(self, args: dict[str, Any]) -> None:
        """Open a PTY and spawn the shell (or ``argv``) on it."""
        argv = args.get("argv")
        if argv is None:
            shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
            argv = [shell]
        argv = str_list(argv, "argv")
        if not argv:
            raise RequestError("bad_request", "argv must not be empty")
        rows, cols = self._size(args)
        env = child_env(args.get("env"), {"TERM": "xterm-256color"})
        cwd = opt_str(args, "cwd")
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
        killpg(proc.pid, signal.SIGHUP)
        killpg(proc.pid, signal.SIGCONT)
        timer = threading.Timer(2.0, killpg, args=(proc.pid, signal.SIGKILL))
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
        code, sig = exit_code(rc)
        self.send(FrameType.EXIT, encode_value({"exit_code": code, "signal": sig}))
        self.finish()
