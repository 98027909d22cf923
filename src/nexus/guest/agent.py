"""The Nexus guest agent: serves the host over virtio-serial, vsock or a test socket.

Run inside the guest as ``PYTHONPATH=/opt/nexus/lib python3 -m nexus.guest.agent``.

Runs on Debian's ``python3-minimal`` (``libpython3.11-minimal``), so it uses only modules
that package ships: no ``json`` (values use :mod:`nexus.guest.protocol`'s own encoding), no
``pty``/``termios``/``tty`` (``os.openpty`` plus raw ioctl numbers), no ``queue``,
``shutil``, ``dataclasses`` or ``shlex``. ``tests/unit/guest`` checks the imports of every
module below.

This module wires the agent together: options, the process groups it must kill when it
stops, the readiness marker, and the serving loops. The rest of ``nexus.guest``, by concern:

* :mod:`~nexus.guest.channel` — finding and opening the transport; framed I/O on one fd.
* :mod:`~nexus.guest.sessions` — one host connection: handshake, stream table, dispatch.
* :mod:`~nexus.guest.streams` — long-lived streams and ``exec``;
  :mod:`~nexus.guest.shells` — PTY shells.
* :mod:`~nexus.guest.ops` — one-shot ops: metrics, reseed, identity, files; HELLO facts.
* :mod:`~nexus.guest.common` — version, log line, request errors and argument checks.

Design: one thread reads the channel and dispatches frames; every stream (an exec or a
shell) has its own small threads (output pumps, a stdin writer, a waiter) that send frames
through the session's locked writer. One-shot requests (metrics, reseed, files) are answered
inline. When the host goes away, every stream of that session is killed and the agent
waits for the next host connection, which starts with a HELLO.

Transports, chosen automatically unless a flag forces one: the virtio-serial port named
``nexus.agent`` (QEMU), an ``AF_VSOCK`` listener on port 1024 (Firecracker), or, in tests,
``--listen-unix PATH`` or an inherited connected socket ``--fd N``.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from nexus.guest.channel import (
    PORT_NAME,
    VSOCK_PORT,
    Channel,
    find_virtio_port,
    open_port,
    unix_listener,
    vsock_available,
    vsock_listener,
)
from nexus.guest.common import AGENT_VERSION, killpg, log
from nexus.guest.sessions import Session

READY_MARKER = "NEXUS-GUEST-READY"


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
            killpg(pid, signal.SIGKILL)

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
        chan = open_port(path)
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
