"""A real VM start is one trace from the manager's request through the agent to QEMU's QMP:
an all-in-one manager (embedded agent, QEMU driver) exports its spans over OTLP/HTTP to a
receiver on loopback."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.aio import all_in_one
from tests.support.otlp import OtlpReceiver

pytestmark = pytest.mark.vm
PW = "vm-trace-admin-pw"


def test_vm_start_trace_spans_manager_agent_and_qmp(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    state = tmp_path_factory.mktemp("tr") / "state"  # short: QEMU's sockets live under it
    with OtlpReceiver() as rx:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        with all_in_one(state, admin_password=PW, env=env, image="test") as a:
            srv, h, image = a.srv, a.h, a.image_id
            r = httpx.post(
                f"{srv.url}/v1/vms?wait=true&timeout=300",
                json={"name": "traced", "image": image, "networks": []},
                headers={**h, "X-Request-ID": "req-vm-trace-1"},
                timeout=320,
            )
            assert r.status_code in (200, 201), r.text
            vm = r.json()
            assert vm["state"] == "running", vm
            deadline = time.monotonic() + 30
            root = None
            while time.monotonic() < deadline:
                root = next(
                    (
                        s
                        for s in rx.spans
                        if s.name == "POST /v1/vms"
                        and s.attributes.get("nexus.request_id") == "req-vm-trace-1"
                    ),
                    None,
                )
                if root is not None and any(
                    s.trace_id == root.trace_id and s.name.startswith("qmp ") for s in rx.spans
                ):
                    break
                time.sleep(0.5)
            assert root is not None, [s.name for s in rx.spans][:50]
            trace = [s for s in rx.spans if s.trace_id == root.trace_id]
            tree = rx.tree(root.trace_id)
            by_id = {s.span_id: s for s in trace}
            qmp = [s for s in trace if s.name.startswith("qmp ")]
            assert qmp, tree
            assert all(s.attributes["nexus.vm_id"] == vm["id"] for s in qmp)
            # qmp <- agent's POST .../start <- the manager's agent call <- operation <- request
            chain, node = [qmp[0].name], qmp[0]
            while node.parent_id in by_id:
                node = by_id[node.parent_id]
                chain.append(node.name)
            assert chain[-1] == "POST /v1/vms", tree
            assert "POST /v1/vms/{vm_id}/start" in chain and "agent POST" in chain, tree
            assert "operation vm.create" in chain, tree
            print("\n" + tree)
            r = httpx.delete(f"{srv.url}/v1/vms/{vm['id']}?wait=true", headers=h, timeout=120)
            assert r.status_code in (200, 202, 204), r.text
