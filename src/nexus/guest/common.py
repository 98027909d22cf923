"""What every module of the guest agent shares: its version, the diagnostic log line, the
error a request is answered with, the checks on request arguments and process helpers.

Like every module the agent imports, this one must run on Debian's ``python3-minimal``
(see :mod:`nexus.guest.agent`); ``tests/unit/guest`` checks the imports.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol

AGENT_VERSION = "0.1.0"
#: Read size for the channel and for process output.
CHUNK = 64 * 1024


class AgentHost(Protocol):
    """What a session and its streams need of the agent (:class:`nexus.guest.agent.Agent`):
    its options and the process groups it kills on exit. A protocol, so that the modules
    below the agent do not import it back."""

    stopping: bool
    set_clock: bool
    credit_entropy: bool
    set_identity: bool

    def track(self, pid: int) -> None:
        """Remember a child's process group."""

    def untrack(self, pid: int) -> None:
        """Forget a child's process group."""


class StreamHost(Protocol):
    """What a stream needs of its session (:class:`nexus.guest.sessions.Session`)."""

    agent: AgentHost

    def send(self, ftype: int, sid: int, payload: bytes = b"", flags: int = 0) -> None:
        """Queue one frame to the host."""

    def forget(self, sid: int, stream: Any) -> None:
        """Drop a finished stream."""


def log(msg: str) -> None:
    """Write one diagnostic line to stderr (the console in a guest)."""
    try:
        sys.stderr.write(f"nexus-guest-agent: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class RequestError(Exception):
    """A request failed in a way reported to the host as an ERROR frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def read_file(path: str, limit: int = 65536) -> str:
    """Up to ``limit`` bytes of a (proc/sys) text file, or ``""`` if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def str_list(value: Any, what: str) -> list[str]:
    """``value`` as a list of strings, or a ``bad_request`` error naming ``what``."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise RequestError("bad_request", f"{what} must be a list of strings")
    return list(value)


def opt_str(args: dict[str, Any], key: str) -> str | None:
    """An optional string argument."""
    val = args.get(key)
    if val is not None and not isinstance(val, str):
        raise RequestError("bad_request", f"{key} must be a string")
    return val


def opt_num(args: dict[str, Any], key: str, default: float | None) -> float | None:
    """An optional number argument (bools are not numbers here)."""
    val = args.get(key, default)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise RequestError("bad_request", f"{key} must be a number")
    return float(val)


def exit_code(rc: int) -> tuple[int, int | None]:
    """Map a Popen return code to (shell-style exit code, signal or None)."""
    if rc < 0:
        return 128 - rc, -rc
    return rc, None


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group that may already be gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
