"""A fake ``firecracker`` binary: an asyncio HTTP server on the ``--api-sock`` Unix socket.

Every request is validated against Firecracker's official Swagger 2.0 spec
(``FAKE_FC_SPEC``): the path must match a documented path template, the method must exist
for it, and the JSON body must validate against the parameter's schema (with unknown fields
rejected, as Firecracker's serde does). Each request is appended to ``FAKE_FC_LOG`` as a
JSON line ``{method, path, body, error}``; invalid ones get ``400 {"fault_message"}``.

Behaviour: ``InstanceStart`` prints ``NEXUS-GUEST-BOOTED``/``NEXUS-GUEST-READY`` on stdout
(the serial console); ``SendCtrlAltDel`` makes the process exit shortly after answering.

Arguments are parsed strictly (unknown or repeated flag -> exit 1): ``--api-sock PATH``,
``--id ID`` / ``--id=ID`` (validated like Firecracker: ``[A-Za-z0-9-]{1,64}``), the jailer's
``--start-time-us=N`` / ``--start-time-cpu-us=N``, and three fake-only flags that
``fake_jailer.py`` adds because it cannot really chroot: ``--chroot DIR --chroot-uid U
--chroot-gid G``. With ``--chroot`` the fake behaves as if ``DIR`` were ``/``: the API socket
and every path in an API body are resolved inside ``DIR``; a body path must be absolute, stay
inside ``DIR`` (no ``..``, no symlink out), and a file Firecracker opens (kernel, initrd,
drives, snapshot to load) must exist there as a regular file owned by ``U:G``; a path
Firecracker creates (vsock UDS, snapshot files) must have its parent directory inside
``DIR``. Violations are answered ``400`` like spec violations.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import stat
import sys
from typing import Any

import jsonschema
import yaml


def strict(schema: Any) -> Any:
    """Reject unknown properties everywhere (Firecracker uses deny_unknown_fields)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


class Api:
    """Routes and validators built from the Swagger document."""

    def __init__(self, spec_path: str) -> None:
        with open(spec_path) as fh:
            self.doc = yaml.safe_load(fh)
        self.definitions = strict(copy.deepcopy(self.doc["definitions"]))
        self.routes: list[tuple[re.Pattern[str], str, dict[str, Any]]] = []
        for template, ops in self.doc["paths"].items():
            rx = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$")
            self.routes.append((rx, template, ops))

    def validate(self, method: str, path: str, body: Any) -> str | None:
        """None if the request conforms to the spec, else the reason."""
        for rx, template, ops in self.routes:
            if rx.match(path):
                op = ops.get(method.lower())
                if op is None:
                    return f"method {method} not allowed on {template}"
                params = [p for p in op.get("parameters", []) if p.get("in") == "body"]
                if not params:
                    return None if body is None else f"{template} takes no body"
                param = params[0]
                if body is None:
                    return f"{template}: body required" if param.get("required") else None
                schema = dict(param["schema"])
                schema["definitions"] = self.definitions
                try:
                    jsonschema.Draft4Validator(schema).validate(body)
                except jsonschema.ValidationError as exc:
                    return f"{template}: {exc.message}"
                return None
        return f"unknown path {path}"


FLAGS = {
    "--api-sock",
    "--id",
    "--start-time-us",
    "--start-time-cpu-us",
    "--chroot",
    "--chroot-uid",
    "--chroot-gid",
}
ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def parse_args(argv: list[str]) -> dict[str, str]:
    """Strict ``--flag value`` / ``--flag=value`` parsing; exits 1 on any error."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag not in FLAGS:
            sys.exit(f"fake firecracker: unknown argument {argv[i]!r}")
        if flag in out:
            sys.exit(f"fake firecracker: {flag} given more than once")
        if not eq:
            i += 1
            if i >= len(argv):
                sys.exit(f"fake firecracker: {flag} needs a value")
            value = argv[i]
        out[flag] = value
        i += 1
    if "--id" in out and not ID_RE.match(out["--id"]):
        sys.exit(f"fake firecracker: invalid instance id {out['--id']!r}")
    return out


class Jail:
    """Path checks of a (pretend) chrooted Firecracker."""

    def __init__(self, root: str, uid: int, gid: int) -> None:
        self.root = os.path.realpath(root)
        self.uid, self.gid = uid, gid

    def host(self, path: str) -> str:
        """Host path of an in-jail path; raises ValueError when it leaves the jail."""
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not an absolute path inside the jail")
        host = os.path.realpath(self.root + path)
        if host != self.root and not host.startswith(self.root + "/"):
            raise ValueError(f"{path!r} resolves outside the jail")
        return host

    def check_file(self, path: str) -> str | None:
        """A file Firecracker opens: inside, regular (not a symlink), owned by uid:gid."""
        try:
            self.host(path)
        except ValueError as exc:
            return str(exc)
        try:
            st = os.lstat(self.root + path)
        except FileNotFoundError:
            return f"{path!r} does not exist inside the jail"
        if not stat.S_ISREG(st.st_mode):
            return f"{path!r} is not a regular file inside the jail"
        if (st.st_uid, st.st_gid) != (self.uid, self.gid):
            return f"{path!r} is owned by {st.st_uid}:{st.st_gid}, not {self.uid}:{self.gid}"
        return None

    def check_new(self, path: str) -> str | None:
        """A path Firecracker creates: its parent directory exists inside the jail."""
        try:
            host = self.host(path)
        except ValueError as exc:
            return str(exc)
        if not os.path.isdir(os.path.dirname(host)):
            return f"{path!r}: parent directory missing inside the jail"
        return None

    def validate(self, target: str, body: Any) -> str | None:
        """None if every path in ``body`` is usable inside the jail."""
        if not isinstance(body, dict):
            return None
        opens: list[str] = []
        creates: list[str] = []
        if target == "/boot-source":
            opens += [body[k] for k in ("kernel_image_path", "initrd_path") if k in body]
        elif target.startswith("/drives/"):
            opens.append(body["path_on_host"])
        elif target == "/vsock":
            creates.append(body["uds_path"])
        elif target == "/snapshot/create":
            creates += [body["snapshot_path"], body["mem_file_path"]]
        elif target == "/snapshot/load":
            opens.append(body["snapshot_path"])
            if "mem_backend" in body:
                opens.append(body["mem_backend"]["backend_path"])
            if "vsock_override" in body:
                creates.append(body["vsock_override"]["uds_path"])
        for path in opens:
            err = self.check_file(path)
            if err:
                return f"jail: {err}"
        for path in creates:
            err = self.check_new(path)
            if err:
                return f"jail: {err}"
        return None


async def main() -> None:
    """Serve until SendCtrlAltDel or SIGKILL."""
    args = parse_args(sys.argv[1:])
    if "--api-sock" not in args:
        sys.exit("fake firecracker: --api-sock is required")
    sock = args["--api-sock"]
    vm_id = args.get("--id", "anonymous")
    jail: Jail | None = None
    if "--chroot" in args:
        jail = Jail(args["--chroot"], int(args["--chroot-uid"]), int(args["--chroot-gid"]))
        if os.path.realpath(os.getcwd()) != jail.root:
            sys.exit("fake firecracker: jailed but the working directory is not the chroot")
        # relative to the working directory (= the jail root): short, like a real chroot
        sock = "./" + sock.lstrip("/") if sock.startswith("/") else sock
    api = Api(os.environ["FAKE_FC_SPEC"])
    log_path = os.environ["FAKE_FC_LOG"]
    state = {"state": "Not started"}
    stop = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await reader.readline()
            if not line:
                break
            method, target, _ = line.decode().split(" ", 2)
            headers: dict[str, str] = {}
            while True:
                h = (await reader.readline()).decode().strip()
                if not h:
                    break
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length", "0"))
            raw = await reader.readexactly(n) if n else b""
            body = json.loads(raw) if raw else None
            error = api.validate(method, target, body)
            if error is None and jail is not None:
                error = jail.validate(target, body)
            with open(log_path, "a") as fh:
                fh.write(
                    json.dumps({"method": method, "path": target, "body": body, "error": error})
                    + "\n"
                )
            status, payload = 204, None
            if error:
                status, payload = 400, {"fault_message": error}
            elif method == "GET" and target == "/":
                status = 200
                payload = {
                    "app_name": "Firecracker",
                    "id": vm_id,
                    "state": state["state"],
                    "vmm_version": "1.17.0-fake",
                }
            elif target == "/actions" and body["action_type"] == "InstanceStart":
                state["state"] = "Running"
                print("NEXUS-GUEST-BOOTED fake\nNEXUS-GUEST-READY fake", flush=True)
            elif target == "/actions" and body["action_type"] == "SendCtrlAltDel":
                stop.set()
            elif target == "/vm":
                state["state"] = "Paused" if body["state"] == "Paused" else "Running"
            elif target == "/snapshot/create":
                for key in ("snapshot_path", "mem_file_path"):
                    path = jail.host(body[key]) if jail else body[key]
                    with open(path, "w") as fh:
                        fh.write("fake")
                    if jail:  # a jailed Firecracker creates files as the jail user
                        os.chown(path, jail.uid, jail.gid)
            elif target == "/snapshot/load":
                state["state"] = "Running" if body.get("resume_vm") else "Paused"
            data = json.dumps(payload).encode() if payload is not None else b""
            reason = {200: "OK", 204: "No Content", 400: "Bad Request"}[status]
            head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(data)}\r\n"
            if data:
                head += "Content-Type: application/json\r\n"
            writer.write(head.encode() + b"\r\n" + data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=sock)
    if jail:
        os.chown(sock, jail.uid, jail.gid)
    async with server:
        await stop.wait()
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main())
