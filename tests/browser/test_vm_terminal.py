"""A real guest from the console: create a VM from a template, watch it come up, run a command
in its terminal (xterm.js over the shell-ticket WebSocket). One boot (QEMU; TCG here)."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.browser.conftest import Watched
from tests.support.server import LiveServer, free_port, login, start_manager, wait_op
from tests.vm.conftest import (  # noqa: F401 (the fixture: this module's bridges and taps go)
    _no_leftover_network_state,
    qemu_pids_under,
)

pytestmark = pytest.mark.vm
PW = "browser-vm-admin-pw"


@pytest.fixture(scope="module")
def aio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    """An all-in-one manager (embedded agent), the default image and a template of it."""
    state = tmp_path_factory.mktemp("aio") / "state"
    srv = start_manager(
        state,
        admin_password=PW,
        env={
            "NEXUS_EMBEDDED_AGENT": "true",
            "NEXUS_AGENT_PORT": str(free_port()),
            "NEXUS_METRICS_INTERVAL_S": "2",  # the metrics chart fills within the test
        },
        timeout=120,
    )
    try:
        h = login(srv, PW)
        r = httpx.post(f"{srv.url}/v1/images/build", json={"name": "default"}, headers=h)
        assert r.status_code == 202, r.text
        op = wait_op(srv, h, r.json())
        assert op["status"] == "succeeded", op
        spec = {"image": op["result"]["image_id"], "memory_mib": 256}
        r = httpx.post(f"{srv.url}/v1/templates", json={"name": "small", "spec": spec}, headers=h)
        assert r.status_code == 201, r.text
        yield srv, h
    finally:
        srv.stop()
        for pid in qemu_pids_under(state):
            os.kill(pid, signal.SIGKILL)


def test_vm_from_template_and_its_terminal(
    aio: tuple[LiveServer, dict[str, str]], open_page: Callable[[str], Watched]
) -> None:
    srv, h = aio
    page = open_page(srv.url)
    page.login("admin", PW)
    page.goto("/vms")
    page.page.get_by_role("button", name="Create from template").click()
    dialog = page.page.get_by_role("dialog")
    dialog.get_by_role("combobox", name="Template").click()
    page.page.get_by_role("option", name="small").click()
    dialog.get_by_role("textbox", name="Name").fill("browser-vm")
    dialog.get_by_role("button", name="Create VM").click()
    page.page.wait_for_url(re.compile(r"/vms/vm_"), timeout=30_000)
    vm_id = page.page.url.rsplit("/", 1)[1]
    try:
        page.page.get_by_role("tab", name="Terminal").click()
        # the page polls the VM: the shell button shows once it runs (a TCG boot is slow)
        page.page.get_by_role("button", name="Open shell").click(timeout=180_000)
        page.page.get_by_test_id("terminal-status").filter(has_text="open").wait_for()
        page.page.locator("[data-testid=terminal] .xterm").click()
        page.page.wait_for_timeout(500)
        page.page.keyboard.type("echo hello-$((6*7))")
        page.page.keyboard.press("Enter")
        rows = page.page.locator("[data-testid=terminal] .xterm-rows")
        page.page.wait_for_function(
            "() => document.querySelector('[data-testid=terminal] .xterm-rows')"
            ".innerText.includes('hello-42')",
            timeout=30_000,
        )
        assert "hello-42" in rows.inner_text()
        page.shot("vm-terminal")
        # a snapshot from the VM page shows in its Snapshots tab once the operation ends
        page.page.get_by_role("button", name="Take snapshot").click()
        dialog = page.page.get_by_role("dialog")
        dialog.get_by_role("textbox", name="Name").fill("snap1")
        dialog.get_by_role("button", name="Take snapshot").click()
        dialog.wait_for(state="hidden")
        page.page.get_by_role("tab", name="Snapshots").click()
        snap = page.page.get_by_role("row").filter(has_text="snap1")
        snap.wait_for(timeout=120_000)
        snap.get_by_text("ready", exact=True).wait_for(timeout=120_000)
        page.shot("vm-snapshots")
        page.page.get_by_role("tab", name="Metrics").click()
        # a line needs two points: samples every 2 s, averaged into 10 s buckets
        page.page.locator(".recharts-line-curve").first.wait_for(timeout=60_000)
        page.shot("vm-metrics")
        page.page.get_by_role("tab", name="Boot console").click()
        page.page.get_by_test_id("boot-console").wait_for()
        page.shot("vm-boot-console")
        page.page.get_by_role("tab", name="Overview").click()
        page.shot("vm-detail")
        assert page.problems() == []
    finally:
        httpx.delete(f"{srv.url}/v1/vms/{vm_id}?wait=true", headers=h, timeout=120)
