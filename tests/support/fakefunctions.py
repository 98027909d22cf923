"""A fake function backend for API and CLI tests: no VMs. "Building" compiles the inline
source in this process; an instance is a namespace; a call runs the handler in a thread
with the version's timeout (a timed-out call reports ``timed_out`` like the guest agent)."""

from __future__ import annotations

import asyncio
import json
import traceback
from typing import Any

from nexus.core.ids import new_id
from nexus.manager.features.functions import runtime
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal


class FakeBackend:
    """Records what it did: ``started``, ``destroyed`` (vm ids), ``built``."""

    def __init__(self) -> None:
        self.code: dict[str, dict[str, Any]] = {}  # snapshot id -> bundle
        self.live: dict[str, dict[str, Any]] = {}  # vm id -> namespace
        self.started: list[str] = []
        self.destroyed: list[str] = []
        self.built: list[int] = []
        self.calls = 0

    async def build(
        self,
        state: ManagerState,
        owner: Principal,
        function_id: str,
        bundle: dict[str, Any],
        memory_mib: int,
        version: int,
    ) -> runtime.BuildResult:
        await asyncio.sleep(0.01)
        try:
            self._load(bundle)
        except Exception as exc:
            raise runtime.BuildFailed(f"the handler did not load: {exc!r}") from exc
        snap = new_id("snap")
        self.code[snap] = bundle
        self.built.append(version)
        return runtime.BuildResult(snap, 200, 300)

    def _load(self, bundle: dict[str, Any]) -> Any:
        ns: dict[str, Any] = {}
        (source,) = bundle["files"].values()
        exec(compile(source, "main.py", "exec"), ns)
        return ns[bundle["handler"].rpartition(".")[2]]

    async def start(
        self,
        state: ManagerState,
        owner: Principal,
        function_id: str,
        snapshot_id: str,
        version: int,
    ) -> runtime.Instance:
        vm_id = new_id("vm")
        bundle = self.code[snapshot_id]
        self.live[vm_id] = {"handler": self._load(bundle), "max_result": bundle["max_result"]}
        self.started.append(vm_id)
        return runtime.Instance(vm_id=vm_id, host_id=None, version=version, start_ms=5)

    async def call(
        self,
        state: ManagerState,
        inst: runtime.Instance,
        request: bytes,
        timeout_s: float,
        max_output: int,
    ) -> runtime.CallResult:
        self.calls += 1
        req = json.loads(request)
        handler = self.live[inst.vm_id]["handler"]
        limit = self.live[inst.vm_id]["max_result"]

        def run() -> dict[str, Any]:
            try:
                body = json.dumps(handler(req["event"], {}))
            except Exception as exc:
                tb = "".join(traceback.format_exception(exc))
                return {
                    "ok": False,
                    "error": {"type": type(exc).__name__, "message": str(exc), "traceback": tb},
                }
            if len(body) > limit:
                msg = f"the result is {len(body)} bytes; at most {limit}"
                return {"ok": False, "error": {"type": "ResultTooLarge", "message": msg}}
            return {"ok": True, "result_json": body, "logs": "ran\n"}

        try:
            answer = await asyncio.wait_for(asyncio.to_thread(run), timeout_s)
        except TimeoutError:
            return runtime.CallResult(b"", b"", -9, True, False)
        return runtime.CallResult(json.dumps(answer).encode()[:max_output], b"", 0, False, False)

    async def destroy(self, state: ManagerState, owner: Principal, vm_id: str) -> None:
        self.live.pop(vm_id, None)
        self.destroyed.append(vm_id)

    async def drop_snapshot(self, state: ManagerState, owner: Principal, snapshot_id: str) -> None:
        self.code.pop(snapshot_id, None)
