"""A fake ``firecracker`` binary: an asyncio HTTP server on the ``--api-sock`` Unix socket.

Every request is validated against Firecracker's official Swagger 2.0 spec
(``FAKE_FC_SPEC``): the path must match a documented path template, the method must exist
for it, and the JSON body must validate against the parameter's schema (with unknown fields
rejected, as Firecracker's serde does). Each request is appended to ``FAKE_FC_LOG`` as a
JSON line ``{method, path, body, error}``; invalid ones get ``400 {"fault_message"}``.

Behaviour: ``InstanceStart`` prints ``NEXUS-GUEST-BOOTED``/``NEXUS-GUEST-READY`` on stdout
(the serial console); ``SendCtrlAltDel`` makes the process exit shortly after answering.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
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


async def main() -> None:
    """Serve until SendCtrlAltDel or SIGKILL."""
    argv = sys.argv[1:]
    sock = argv[argv.index("--api-sock") + 1]
    vm_id = argv[argv.index("--id") + 1] if "--id" in argv else "anonymous"
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
                    with open(body[key], "w") as fh:
                        fh.write("fake")
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
    async with server:
        await stop.wait()
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main())
