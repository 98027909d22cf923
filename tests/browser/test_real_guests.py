"""Real guests from the console, against an all-in-one manager (QEMU; TCG here):

* a VM created from a template: a command in its terminal (xterm.js over the shell-ticket
  WebSocket), a snapshot, its metrics chart, its boot console, a clone (not started), and a
  `poweroff` typed in its terminal that brings the "stopped unexpectedly" notification live;
* a container image imported from an archive, a container deployed from it, its logs followed
  and a shell inside it;
* a function created from its source, invoked from its invoke console, the invocation listed
  with its logs.

Three boots: the VM, the container's microVM and the function's (a snapshot, then one
restore)."""

from __future__ import annotations

import re
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Watched
from tests.support.aio import all_in_one
from tests.support.oci import build_oci_layout
from tests.support.server import LiveServer, wait_op
from tests.vm.conftest import (  # noqa: F401 (the fixture: this module's bridges and taps go)
    _no_leftover_network_state,
)

pytestmark = pytest.mark.vm
PW = "browser-vm-admin-pw"


@pytest.fixture(scope="module")
def aio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    """An all-in-one manager (embedded agent), the default image and a template of it."""
    state = tmp_path_factory.mktemp("aio") / "state"
    # the metrics chart fills within the test
    with all_in_one(state, admin_password=PW, env={"NEXUS_METRICS_INTERVAL_S": "2"}) as a:
        spec = {"image": a.image_id, "memory_mib": 256}
        r = httpx.post(
            f"{a.srv.url}/v1/templates", json={"name": "small", "spec": spec}, headers=a.h
        )
        assert r.status_code == 201, r.text
        yield a.srv, a.h


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
    clone_id = ""
    try:
        page.page.get_by_role("tab", name="Terminal").click()
        # the page polls the VM: the shell button shows once it runs (a TCG boot is slow)
        _run_in_terminal(page, "echo hello-$((6*7))", "hello-42", open_timeout=180_000)
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
        curve = page.page.locator(".recharts-line-curve").first
        curve.wait_for(timeout=60_000)
        # and it moves: new samples redraw the line
        first = curve.get_attribute("d")
        page.page.wait_for_function(
            "(was) => { const c = document.querySelector('.recharts-line-curve');"
            " return c && c.getAttribute('d') !== was; }",
            arg=first,
            timeout=90_000,
        )
        page.shot("vm-metrics")
        page.page.get_by_role("tab", name="Boot console").click()
        page.page.get_by_test_id("boot-console").wait_for()
        page.shot("vm-boot-console")
        page.page.get_by_role("tab", name="Overview").click()
        page.shot("vm-detail")
        # a clone (not started) opens on its own page
        page.page.get_by_role("button", name="Clone").click()
        dialog = page.page.get_by_role("dialog")
        dialog.get_by_role("textbox", name="Name").fill("browser-clone")
        dialog.get_by_role("button", name=re.compile("^More options")).click()
        dialog.get_by_role("checkbox", name="Start").uncheck()
        dialog.get_by_role("button", name="Clone").click()
        page.page.wait_for_url(lambda u: "/vms/vm_" in u and not u.endswith(vm_id))
        clone_id = page.page.url.rsplit("/", 1)[1]
        # the clone's operation is followed in a toast to its end
        page.page.locator(".mantine-Notification-root").filter(
            has_text=re.compile(rf"vm clone \({clone_id}\): succeeded")
        ).wait_for(timeout=120_000)
        page.page.get_by_role("heading", name="browser-clone").wait_for()
        page.page.get_by_text("stopped", exact=True).first.wait_for(timeout=120_000)
        page.shot("vm-clone")
        r = httpx.get(f"{srv.url}/v1/vms/{clone_id}", headers=h)
        assert r.json()["state"] == "stopped" and r.json()["name"] == "browser-clone", r.text
        # the guest powers itself off: the owner is told live (toast and bell)
        page.goto(f"/vms/{vm_id}")
        page.page.get_by_role("tab", name="Terminal").click()
        _run_in_terminal(page, "poweroff", None)
        toast = page.page.locator(".mantine-Notification-root").filter(
            has_text="browser-vm stopped unexpectedly"
        )
        toast.wait_for(timeout=120_000)
        page.shot("vm-stopped-notification")
        page.page.get_by_role("button", name=re.compile("^Notifications")).click()
        page.page.get_by_text("VM browser-vm stopped unexpectedly").first.wait_for()
        page.shot("notification-vm-stopped")
        assert page.problems() == []
    finally:
        for vid in (vm_id, clone_id):
            if vid:
                httpx.delete(f"{srv.url}/v1/vms/{vid}?wait=true", headers=h, timeout=120)


def _run_in_terminal(
    page: Watched, command: str, expect: str | None, open_timeout: float = 60_000
) -> None:
    """Open the shell of the page's terminal tab, type ``command``, wait for ``expect``."""
    page.page.get_by_role("button", name="Open shell").click(timeout=open_timeout)
    page.page.get_by_test_id("terminal-status").filter(has_text="open").wait_for()
    page.page.locator("[data-testid=terminal] .xterm").click()
    page.page.wait_for_timeout(500)
    page.page.keyboard.type(command)
    page.page.keyboard.press("Enter")
    if expect is None:
        return
    page.page.wait_for_function(
        "(want) => document.querySelector('[data-testid=terminal] .xterm-rows')"
        ".innerText.includes(want)",
        arg=expect,
        timeout=30_000,
    )


def _oci_archive(d: Path) -> Path:
    """The tests' OCI image (busybox, user app, an entrypoint that says hello) as a tar."""
    build_oci_layout(d / "layout")
    out = d / "demo.tar"
    with tarfile.open(out, "w") as tar:
        for p in sorted((d / "layout").rglob("*")):
            tar.add(p, arcname=str(p.relative_to(d / "layout")), recursive=False)
    return out


def test_container_import_deploy_logs_and_shell(
    aio: tuple[LiveServer, dict[str, str]],
    open_page: Callable[[str], Watched],
    tmp_path: Path,
) -> None:
    srv, h = aio
    page = open_page(srv.url)
    page.login("admin", PW)
    # the image, from an archive uploaded with a progress bar
    page.goto("/container-images")
    page.page.get_by_role("button", name="Import archive").click()
    dialog = page.page.get_by_role("dialog")
    dialog.get_by_role("textbox", name="Name").fill("demo")
    dialog.locator("input[type=file]").set_input_files(str(_oci_archive(tmp_path)))
    dialog.get_by_role("button", name="Import", exact=True).click()
    dialog.wait_for(state="hidden", timeout=120_000)
    page.page.get_by_role("link", name="demo").wait_for()
    # a container of it
    page.goto("/containers")
    page.page.get_by_role("button", name="Deploy container").click()
    dialog = page.page.get_by_role("dialog")
    dialog.get_by_role("textbox", name="Name").fill("web")
    dialog.get_by_role("textbox", name="Image").fill("demo")
    dialog.get_by_role("button", name="Create", exact=True).click()
    dialog.wait_for(state="hidden", timeout=60_000)
    ctr_id = ""
    try:
        page.page.get_by_role("link", name="web", exact=True).click()
        page.page.wait_for_url(re.compile(r"/containers/ctr_"))
        ctr_id = page.page.url.rsplit("/", 1)[1]
        page.page.get_by_text("running", exact=True).first.wait_for(timeout=240_000)
        # its logs, followed: the API streams them (NDJSON) while the container runs
        page.page.get_by_role("tab", name="Logs").click()
        page.page.get_by_role("button", name="Follow").click()
        page.page.get_by_test_id("logs-status").filter(has_text="following").wait_for()
        logs = page.page.get_by_test_id("container-logs")
        logs.filter(has_text="container says hello FOO=from-image uid=1000").wait_for(
            timeout=60_000
        )
        assert "stderr to stderr" in logs.inner_text()
        page.shot("container-logs")
        page.page.get_by_role("button", name="Stop following").click()
        # a shell inside the container: the image's files, as the image's user
        page.page.get_by_role("tab", name="Terminal").click()
        _run_in_terminal(page, "echo $(id -u):$(cat /www/marker.txt)", "1000:second layer")
        page.shot("container-terminal")
        assert page.problems() == []
    finally:
        if ctr_id:
            r = httpx.delete(f"{srv.url}/v1/containers/{ctr_id}", headers=h, timeout=60)
            assert r.status_code in (202, 204), r.text
            if r.status_code == 202:
                assert wait_op(srv, h, r.json())["status"] == "succeeded"


FN_SOURCE = """\
def handler(event, context):
    print("doubling", event.get("x"))
    return {"doubled": event.get("x", 0) * 2}
"""


def test_function_create_and_invoke_console(
    aio: tuple[LiveServer, dict[str, str]], open_page: Callable[[str], Watched]
) -> None:
    srv, h = aio
    page = open_page(srv.url)
    page.login("admin", PW)
    page.goto("/functions")
    page.page.get_by_role("button", name="Create function").click()
    dialog = page.page.get_by_role("dialog")
    dialog.get_by_role("textbox", name="Name").fill("double")
    dialog.get_by_role("textbox", name="Source").fill(FN_SOURCE)
    dialog.get_by_role("button", name="Create", exact=True).click()
    dialog.wait_for(state="hidden", timeout=60_000)
    fn_id = ""
    try:
        page.page.get_by_role("link", name="double", exact=True).click()
        page.page.wait_for_url(re.compile(r"/functions/fn_"))
        fn_id = page.page.url.rsplit("/", 1)[1]
        # the first version builds (boot, import, snapshot): an operation
        deadline = time.monotonic() + 600
        fn: dict[str, Any] = {}
        while time.monotonic() < deadline:
            fn = httpx.get(f"{srv.url}/v1/functions/{fn_id}", headers=h).json()
            if fn["version"]["state"] in ("ready", "failed"):
                break
            time.sleep(2)
        assert fn["version"]["state"] == "ready", fn
        page.page.get_by_role("tab", name="Invoke").click()
        page.page.get_by_role("textbox", name="Event (JSON)").fill('{"x": 21}')
        page.page.get_by_role("button", name="Invoke", exact=True).click()
        result = page.page.locator("pre").filter(has_text='"doubled": 42')
        result.wait_for(timeout=180_000)
        page.shot("function-invoke")
        # the invocation is listed, with its logs
        page.page.get_by_role("tab", name="Invocations").click()
        row = page.page.get_by_role("row").filter(has_text="succeeded")
        row.first.wait_for(timeout=30_000)
        row.first.get_by_role("button", name="Logs").click()
        page.page.get_by_role("dialog").get_by_text("doubling 21").wait_for()
        page.shot("function-invocation-logs")
        assert page.problems() == []
    finally:
        if fn_id:
            httpx.delete(f"{srv.url}/v1/functions/{fn_id}", headers=h, timeout=120)
