"""Host sessions: one host connection's handshake, its table of open streams, and the
dispatcher that routes every incoming frame — to a new stream (``exec``, ``shell``), to a
one-shot op, or to a stream already open.

A session lasts as long as its host connection: when the host goes away, or a HELLO with a
new nonce says a new host has taken over the same channel, every stream it opened is
killed. The dispatcher never raises: a bad frame is answered with an ERROR frame.
"""

from __future__ import annotations

import threading
from typing import Any

from nexus.guest.channel import Channel, Disconnected
from nexus.guest.common import AgentHost, RequestError, log
from nexus.guest.ops import facts, file_read, file_write, identity, metrics, reseed
from nexus.guest.protocol import (
    FLAG_EOF,
    PROTOCOL_VERSIONS,
    Frame,
    FrameParser,
    FrameType,
    ProtocolError,
    choose_version,
    encode_value,
)
from nexus.guest.shells import ShellStream
from nexus.guest.streams import ExecStream, Stream


class Session:
    """One host connection: handshake state, open streams, the frame dispatcher."""

    def __init__(self, agent: AgentHost, chan: Channel) -> None:
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
            self.chan.send_frame(ftype, sid, payload, flags, self._is_alive)
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
                try:
                    frames = self.chan.recv_frames(parser, 1.0)
                except Disconnected:
                    break
                for frame in frames:
                    self.dispatch(frame)
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
                stream.start(args)
            except BaseException:
                self.forget(sid, stream)
                raise
            return
        agent = self.agent
        handler = {
            "metrics": lambda a: metrics(),
            "reseed": lambda a: reseed(
                a, set_clock=agent.set_clock, credit_entropy=agent.credit_entropy
            ),
            "identity": lambda a: identity(a, apply=agent.set_identity),
            "file_read": file_read,
            "file_write": file_write,
        }.get(op)
        if handler is None:
            raise RequestError("unknown_op", f"unknown op {op!r}")
        self.send_value(FrameType.RESPONSE, sid, handler(args))
