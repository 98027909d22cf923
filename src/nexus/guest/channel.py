"""The transport under the protocol: finding the guest's end of the channel, and moving
frames over it through one non-blocking file descriptor with a locked writer.

Transports (:func:`nexus.guest.agent.main` picks one automatically unless a flag forces it):

* QEMU: the virtio-serial port whose ``/sys/class/virtio-ports/*/name`` is ``nexus.agent``
  (``/dev/vportNpM``; there is no udev). A host disconnect shows as EOF/POLLHUP; the agent
  then polls until the host is back.
* Firecracker: an ``AF_VSOCK`` listening socket on port 1024; one session per connection.
* Tests: ``--listen-unix PATH`` (like vsock, one session per connection) or ``--fd N`` (an
  inherited connected socket: one session, then exit).

The writer is locked because the threads of every stream send frames on the same channel:
frames from different threads must never interleave.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from typing import Any

from nexus.guest.common import CHUNK, log, read_file
from nexus.guest.protocol import Frame, FrameParser, encode_frame

PORT_NAME = "nexus.agent"
VSOCK_PORT = 1024


class Disconnected(Exception):
    """The host side of the channel went away."""


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

    def recv_frames(self, parser: FrameParser, timeout: float) -> list[Frame]:
        """The frames completed by what arrives within ``timeout`` (``[]`` if nothing did).

        Raises :class:`Disconnected` when the host went away. ``parser`` belongs to one
        host session, so bytes left over from an earlier host are never glued to the
        next one's; garbage between frames is skipped (and logged) by the parser.
        """
        data = self.recv(timeout)
        if data is None:
            return []
        if not data:
            raise Disconnected()
        before = parser.discarded
        frames = parser.feed(data)
        if parser.discarded != before:
            log(f"skipped {parser.discarded - before} bytes of garbage")
        return frames

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

    def send_frame(
        self, ftype: int, stream: int, payload: bytes = b"", flags: int = 0, valid: Any = None
    ) -> None:
        """Encode and write one frame (see :meth:`send_all` for ``valid``)."""
        self.send_all(encode_frame(ftype, stream, payload, flags), valid)

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
# Finding and opening a transport
# ---------------------------------------------------------------------------------------


def find_virtio_port(name: str = PORT_NAME, sysfs: str = "/sys/class/virtio-ports") -> str | None:
    """Return ``/dev/<vportNpM>`` whose sysfs ``name`` is ``name``, or None."""
    try:
        entries = sorted(os.listdir(sysfs))
    except OSError:
        return None
    for entry in entries:
        if read_file(os.path.join(sysfs, entry, "name"), 256).strip() == name:
            dev = os.path.join("/dev", entry)
            if os.path.exists(dev):
                return dev
    return None


def open_port(path: str) -> Channel:
    """A channel on a virtio-serial port (or any character device, e.g. a pty in tests)."""
    return Channel(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY))


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
