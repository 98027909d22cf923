"""The in-guest function runner (python3.11 runtime). Not imported by the manager: its
source is sent into the guest through the guest agent's exec, and runs there (stdlib only).

``setup``: reads one JSON document on stdin (``{handler, env, files | zip_b64}``), writes the
code under ``/var/lib/nexus-fn/code``, starts the serving daemon in a session of its own and
waits until it has imported the handler; prints ``{"ok": true}`` or the import error.

The daemon serves one invocation at a time over two FIFOs: it reads a request document from
``in`` (to EOF), calls the handler with stdout/stderr captured (bounded), and writes one
answer document to ``out``. When the host's instance id changes (the VM was restored from
the snapshot as a new VM) it reseeds ``random`` first, so clones never share a sequence.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import inspect
import io
import json
import os
import random
import sys
import time
import traceback
import zipfile
from typing import Any

ROOT = "/var/lib/nexus-fn"
CODE = ROOT + "/code"
FIFO_IN = ROOT + "/in"
FIFO_OUT = ROOT + "/out"
MAX_LOG = 64 * 1024
MAX_TB = 16 * 1024


class Capped(io.TextIOBase):
    """A text sink that keeps at most ``MAX_LOG`` characters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def write(self, s: str) -> int:
        room = MAX_LOG - self.size
        if room > 0:
            self.parts.append(s[:room])
            self.size += min(len(s), room)
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def text(self) -> str:
        out = "".join(self.parts)
        return out + (f"\n[{self.dropped} characters of output dropped]" if self.dropped else "")


def _safe_path(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"bad file name in the code bundle: {name!r}")
    return os.path.join(CODE, *parts)


def write_code(req: dict[str, Any]) -> None:
    """Write the bundle's files under CODE (no absolute paths, no '..')."""
    os.makedirs(CODE, exist_ok=True)
    files: dict[str, str] = dict(req.get("files") or {})
    if req.get("zip_b64"):
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(req["zip_b64"]))) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                dst = _safe_path(info.filename)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with open(dst, "wb") as fh:
                    fh.write(zf.read(info))
    for name, text in files.items():
        dst = _safe_path(name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "w", encoding="utf-8") as fh:
            fh.write(text)


def load_handler(spec: str) -> Any:
    """Import ``module.func`` from CODE."""
    module, _, func = spec.rpartition(".")
    sys.path.insert(0, CODE)
    mod = importlib.import_module(module)
    fn = getattr(mod, func)
    if not callable(fn):
        raise TypeError(f"{spec} is not callable")
    try:  # handler(event) or handler(event, context)
        takes_context = len(inspect.signature(fn).parameters) >= 2
    except (TypeError, ValueError):
        takes_context = True
    if takes_context:
        return fn
    return lambda event, _context: fn(event)


def _error(exc: BaseException) -> dict[str, Any]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"type": type(exc).__name__, "message": str(exc)[:2000], "traceback": tb[-MAX_TB:]}


def serve(handler: Any, max_result: int, ready_fd: int) -> None:
    """Answer invocations forever, one at a time."""
    for path in (FIFO_IN, FIFO_OUT):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.mkfifo(path, 0o600)
    os.write(ready_fd, json.dumps({"ok": True, "pid": os.getpid()}).encode())
    os.close(ready_fd)
    instance = ""
    while True:
        with open(FIFO_IN, "rb") as fh:
            raw = fh.read()
        began = time.monotonic()
        logs = Capped()
        answer: dict[str, Any]
        try:
            req = json.loads(raw)
            if req.get("instance") != instance:
                instance = str(req.get("instance"))
                random.seed()  # a restored clone: never continue the snapshot's sequence
            with contextlib.redirect_stdout(logs), contextlib.redirect_stderr(logs):
                result = handler(req.get("event"), {"instance": instance})
            body = json.dumps(result)
            if len(body) > max_result:
                answer = {
                    "ok": False,
                    "error": {
                        "type": "ResultTooLarge",
                        "message": f"the result is {len(body)} bytes; at most {max_result}",
                        "traceback": "",
                    },
                    "result_bytes": len(body),
                }
            else:
                answer = {"ok": True, "result_json": body}
        except Exception as exc:  # the user's code failed: a structured error, not a crash
            answer = {"ok": False, "error": _error(exc)}
        answer["logs"] = logs.text()
        answer["duration_ms"] = int((time.monotonic() - began) * 1000)
        with open(FIFO_OUT, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(answer))


def setup(req: dict[str, Any]) -> None:
    """Write the code, start the daemon, wait for it to import the handler."""
    os.makedirs(ROOT, mode=0o700, exist_ok=True)
    write_code(req)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(r)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            os.environ.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
            os.chdir(CODE)
            handler = load_handler(str(req["handler"]))
            serve(handler, int(req.get("max_result", 1 << 20)), w)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(w, json.dumps({"ok": False, "error": _error(exc)}).encode())
        os._exit(1)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
        if b.endswith(b"}"):
            try:
                json.loads(b"".join(chunks))
                break
            except ValueError:
                continue
    sys.stdout.write(b"".join(chunks).decode() or '{"ok": false, "error": {"type": "Exit"}}')
    sys.stdout.flush()
