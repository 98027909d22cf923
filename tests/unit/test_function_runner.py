"""The in-guest function runner (``functions/guest_runner.py``), run on the host in a
scratch directory: setup writes the code and imports the handler, then the daemon answers
over its FIFOs — results, structured errors with tracebacks, capped logs, the result cap,
reseeding per instance; unsafe zip members and import errors are refused."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.manager.features.functions import runtime, service

RUNNER = Path(runtime.__file__).parent / "guest_runner.py"
SOURCE = """\
import random
def handler(event, context):
    if event.get("raise"):
        raise RuntimeError("nope")
    if event.get("shout"):
        print("x" * 100_000)
    if event.get("big"):
        return "y" * 5000
    if event.get("rand"):
        return random.random()
    print("hello", event["x"])
    return event["x"] * 2
"""


def _setup(root: Path, bundle: dict[str, Any]) -> dict[str, Any]:
    script = (
        "import json, sys\n"
        f"ns = {{'__name__': 'runner'}}\nexec(open({str(RUNNER)!r}).read(), ns)\n"
        f"ns['ROOT'] = {str(root)!r}\nns['CODE'] = ns['ROOT'] + '/code'\n"
        "ns['FIFO_IN'] = ns['ROOT'] + '/in'\nns['FIFO_OUT'] = ns['ROOT'] + '/out'\n"
        "ns['setup'](json.load(sys.stdin))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(bundle),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def _call(root: Path, event: Any, instance: str = "vm_a") -> dict[str, Any]:
    with open(root / "in", "wb") as fh:
        fh.write(json.dumps({"event": event, "instance": instance}).encode())
    with open(root / "out", "rb") as fh:
        return service.runtime.parse_answer(fh.read())


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Path]:
    bundle = {"handler": "main.handler", "files": {"main.py": SOURCE}, "max_result": 1000}
    ready = _setup(tmp_path, bundle)
    assert ready["ok"] is True, ready
    yield tmp_path
    os.kill(ready["pid"], signal.SIGKILL)


def test_answers_errors_logs_and_caps(runner: Path) -> None:
    ok = _call(runner, {"x": 21})
    assert ok["ok"] is True and json.loads(ok["result_json"]) == 42
    assert ok["logs"] == "hello 21\n"
    err = _call(runner, {"raise": 1})
    assert err["ok"] is False and err["error"]["type"] == "RuntimeError"
    assert (
        "Traceback" in err["error"]["traceback"]
        and 'raise RuntimeError("nope")' in (err["error"]["traceback"])
    )
    loud = _call(runner, {"shout": 1, "x": 1})
    assert len(loud["logs"]) < 70_000 and "characters of output dropped" in loud["logs"]
    big = _call(runner, {"big": 1})
    assert big["ok"] is False and big["error"]["type"] == "ResultTooLarge"
    # a new instance (a restored clone) reseeds random: no shared sequence
    a = json.loads(_call(runner, {"rand": 1}, "vm_a")["result_json"])
    b = json.loads(_call(runner, {"rand": 1}, "vm_b")["result_json"])
    assert a != b


def test_bad_code_is_refused(tmp_path: Path) -> None:
    bad = _setup(tmp_path / "a", {"handler": "main.handler", "files": {"main.py": "import nope_x"}})
    assert bad["ok"] is False and "nope_x" in bad["error"]["traceback"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.py", "x = 1")
    zipped = base64.b64encode(buf.getvalue()).decode()
    (tmp_path / "b").mkdir()
    with pytest.raises(AssertionError, match="bad file name"):
        _setup(tmp_path / "b", {"handler": "main.handler", "zip_b64": zipped})
    assert not (tmp_path / "escape.py").exists()


def test_the_host_refuses_unsafe_zips_and_odd_answers() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../etc/evil.py", "x = 1")
    code = service.FunctionCode(zip_base64=base64.b64encode(buf.getvalue()).decode())
    with pytest.raises(service.ValidationFailed):
        service._bundle(code, "main.handler")
    assert runtime.parse_answer(b"[1, 2]") == {}
    assert runtime.parse_answer(b"\xff\xfe") == {}
    out = service.Outcome()
    res = runtime.CallResult(b'{"ok": "yes"}', b"", 0, False, False)
    assert service._interpret(out, res, 5) is False and out.status == "failed"


BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)


@pytest.mark.skipif(BUSYBOX is None, reason="no busybox on this host")
def test_the_call_command_round_trips(runner: Path) -> None:
    """The exact command the host runs in the guest for a call (``runtime.CALL``), with this
    host's busybox."""
    argv = [
        a.replace(runtime.BB, str(BUSYBOX)).replace("/var/lib/nexus-fn", str(runner))
        for a in runtime.CALL
    ]
    for event, want in (({"x": 21, "q": 'a "q" \\ %s'}, 42), ({"x": 2, "shout": 1}, 4)):
        request = json.dumps({"event": event, "instance": "vm_a"}).encode()
        p = subprocess.run(argv, input=request, capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr
        out = runtime.parse_answer(p.stdout)
        assert out["ok"] is True and json.loads(out["result_json"]) == want
