"""``nexus function ...`` and ``client.functions`` against a manager (in this process, on
a uvicorn thread) whose function backend is the fake one: no VMs (tests/vm has those)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from nexus.client import Client, RateLimited
from nexus.core.settings import Settings
from nexus.manager import migrate
from nexus.manager.app import create_app
from nexus.manager.features.functions import runtime
from tests.support.fakefunctions import FakeBackend

from .conftest import ADMIN_PASSWORD, Runner, free_port

SOURCE = (
    "def handler(event, context):\n"
    "    print('got', event)\n"
    "    if event.get('fail'):\n"
    "        raise KeyError('nope')\n"
    "    return event['x'] * 2\n"
)


@pytest.fixture(scope="module")
def fn_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A manager with the fake function backend; its URL."""
    state = tmp_path_factory.mktemp("fn-manager")
    url = f"sqlite+aiosqlite:///{state / 'nexus.db'}"
    migrate.upgrade_sync(url)
    (state / "nexus.db").chmod(0o600)
    settings = Settings(
        database_url=url,
        state_dir=state / "state",
        cache_dir=state / "cache",
        embedded_agent=False,
        bootstrap_admin_password=ADMIN_PASSWORD,
        log_level="warning",
        rate_limit_auth="10000/minute",
        rate_limit_create="10000/minute",
    )
    app = create_app(settings)
    app.state.nexus.extras[runtime.BACKEND_KEY] = FakeBackend()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the manager did not start"
        time.sleep(0.1)
    yield base
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def cli(nexus: Runner, fn_url: str, config_dir: Path) -> Runner:
    with Client.login(fn_url, "admin", ADMIN_PASSWORD) as c:
        access, refresh = c.token, c.refresh_token
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.toml").write_text(
        'current_context = "default"\n\n[contexts.default]\n'
        f'url = "{fn_url}"\naccess_token = "{access}"\nrefresh_token = "{refresh}"\n'
        'username = "admin"\n'
    )
    (config_dir / "config.toml").chmod(0o600)
    return nexus


def test_function_commands(cli: Runner, tmp_path: Path) -> None:
    code = tmp_path / "main.py"
    code.write_text(SOURCE)
    r = cli("function", "create", "double", "--code", str(code), "--concurrency", "2")
    assert r.code == 0, r.err
    assert "double" in r.out
    r = cli("-o", "json", "function", "list")
    assert r.code == 0 and json.loads(r.out)[0]["latest_version"] == 1, r.out + r.err
    # the event from --data, a file, and standard input
    r = cli("function", "invoke", "double", "--data", '{"x": 21}')
    assert r.code == 0 and r.out.strip() == "42", r.out + r.err
    event = tmp_path / "event.json"
    event.write_text('{"x": 5}')
    assert cli("function", "invoke", "double", "--event", str(event)).out.strip() == "10"
    r = cli("function", "invoke", "double", "--event", "-", input='{"x": 1}')
    assert r.code == 0 and r.out.strip() == "2", r.err
    # a failing handler: exit 1, the traceback on stderr
    r = cli("function", "invoke", "double", "--data", '{"fail": true}')
    assert r.code == 1 and "KeyError" in r.err and "Traceback" in r.err, r.err
    r = cli("-o", "json", "function", "invoke", "double", "--data", '{"x": 2}')
    inv = json.loads(r.out)
    assert inv["result"] == 4 and inv["cold_start"] is False
    r = cli("function", "invoke", "double", "--data", "{not json")
    assert r.code == 1 and "not JSON" in r.err
    # deploy a new version
    code.write_text(SOURCE.replace("* 2", "* 3"))
    r = cli("function", "deploy", "double", "--code", str(code))
    assert r.code == 0, r.err
    assert cli("function", "invoke", "double", "--data", '{"x": 2}').out.strip() == "6"
    # logs: the list, and one invocation's output
    r = cli("-o", "json", "function", "logs", "double")
    assert r.code == 0 and len(json.loads(r.out)) == 6, r.out
    r = cli("function", "logs", "double", inv["id"])
    assert r.code == 0 and r.out == "ran\n", r.out
    r = cli("function", "delete", "double", "--yes")
    assert r.code == 0, r.err
    assert cli("function", "invoke", "double", "--data", "{}").code == 1


def test_sdk_functions(fn_url: str) -> None:
    with Client.login(fn_url, "admin", ADMIN_PASSWORD) as c:
        fn = c.functions.create("sdk-fn", SOURCE, max_queue=0, concurrency=1)
        assert fn.version is not None and fn.version.state == "ready"
        out = c.functions.invoke(fn.id, {"x": 4})
        assert out.result == 8 and out.cold_start is True and out.version == 1
        queued = c.functions.invoke(fn.id, {"x": 5}, asynchronous=True)
        for _ in range(400):
            got = c.functions.invocation(fn.id, queued.id)
            if got.status not in ("queued", "running"):
                break
            time.sleep(0.05)
        assert got.result == 10
        assert [i.status for i in c.functions.invocations(fn.id)] == ["succeeded"] * 2
        assert [v.version for v in c.functions.versions(fn.id)] == [1]
        assert c.functions.set_alias(fn.id, "prod", 1).aliases["prod"] == 1
        assert c.functions.update(fn.id, min_warm=0, idle_s=60).idle_s == 60
        assert RateLimited  # the SDK's error for a full queue (429)
        c.functions.delete(fn.id)
