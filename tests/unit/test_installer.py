"""deploy/install/nexus-install into a scratch root, with the manager started by hand from its
installed unit's lines (no systemd here): install, a second install that changes nothing,
verify, an upgrade, an upgrade to a broken version that rolls itself back, rollback,
uninstall. And ``systemd-analyze verify`` on the units as shipped.

Limits (said plainly): the hand-started manager runs as the test's user (root), not as
``nexus`` (a user that exists only in the scratch root's /etc/passwd), and systemd's
sandboxing directives are checked by ``systemd-analyze verify`` only, not enforced. The agent
unit is verified and its ExecStart binary checked, but no agent is started (it needs a real
host network).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "deploy" / "install" / "nexus-install"
UNITS = ROOT / "deploy" / "systemd"

pytestmark = pytest.mark.skipif(
    shutil.which("useradd") is None or os.geteuid() != 0,
    reason="the installer test needs root and useradd (make test runs as root)",
)

# Starts the manager from the unit file's Environment= and ExecStart= lines, as systemd would
# (less User= and the sandbox), stopping the one started before. Used as --restart-cmd.
RESTARTER = r"""
import os, re, shlex, signal, subprocess, sys, time
root, unit = sys.argv[1], sys.argv[2]
pidfile = os.path.join(root, "manager.pid")
if os.path.exists(pidfile):
    try:
        os.kill(int(open(pidfile).read()), signal.SIGTERM)
        for _ in range(100):
            os.kill(int(open(pidfile).read()), 0)
            time.sleep(0.1)
    except (ProcessLookupError, ValueError):
        pass
env = dict(os.environ)
env.update({"NEXUS_BOOTSTRAP_ADMIN_PASSWORD": "installer-test-pw", "NEXUS_LOG_JSON": "true"})
exec_start = None
for line in open(unit).read().splitlines():
    if line.startswith("Environment="):
        k, _, v = line[len("Environment="):].partition("=")
        env[k] = v
    elif line.startswith("ExecStart="):
        exec_start = shlex.split(line[len("ExecStart="):])
log = open(os.path.join(root, "manager.log"), "ab")
p = subprocess.Popen(exec_start, env=env, stdout=log, stderr=log, start_new_session=True)
open(pidfile, "w").write(str(p.pid))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _build(src_version: str | None, out: Path, *, broken: bool = False) -> Path:
    """A wheel of this checkout, or of a copy whose version (and health) is changed."""
    if src_version is None:
        res = subprocess.run(
            ["scripts/build-dist.sh"],
            cwd=ROOT,
            env={**os.environ, "DIST_DIR": str(out)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return next(out.glob("nexus_microvm-*.whl"))
    work = out / f"src-{src_version}"
    for name in ("pyproject.toml", "hatch_build.py", "README.md", "uv.lock"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, work / name)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "migrations", work / "migrations")
    init = work / "src" / "nexus" / "__init__.py"
    init.write_text(
        re.sub(r'__version__ = "[^"]+"', f'__version__ = "{src_version}"', init.read_text())
    )
    if broken:  # a release whose manager dies at start: the health check must fail
        entry = work / "src" / "nexus" / "_entry.py"
        entry.write_text(
            entry.read_text().replace(
                'def manager() -> None:\n    """``nexus-manager``."""\n',
                'def manager() -> None:\n    """``nexus-manager``."""\n'
                '    if sys.argv[1:2] == ["serve"]:\n        sys.exit("broken release")\n',
            )
        )
    res = subprocess.run(
        [str(ROOT / ".tools" / "bin" / "uv"), "build", "--wheel", "--quiet", "--out-dir", str(out)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return next(out.glob(f"nexus_microvm-{src_version}-*.whl"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    base = tmp_path_factory.mktemp("installer")
    dist = base / "dist"
    wheel1 = _build(None, dist)
    wheel2 = _build("0.999.1", dist)
    wheel3 = _build("0.999.2", dist, broken=True)
    root = base / "root"
    root.mkdir()
    port = _free_port()
    (base / "restart.py").write_text(RESTARTER)
    unit = root / "etc/systemd/system/nexus-manager.service"
    restart = f"{shlex.quote(sys.executable)} {base / 'restart.py'} {root} {unit}"
    ctx: dict[str, object] = {
        "root": root,
        "port": port,
        "req": dist / "requirements-server.txt",
        "wheels": (wheel1, wheel2, wheel3),
        "restart": restart,
        "health": f"http://127.0.0.1:{port}/health/ready",
    }
    yield ctx
    pidfile = root / "manager.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


def _installer(
    ctx: dict[str, object], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        str(INSTALL),
        "--root",
        str(ctx["root"]),
        "--health-url",
        str(ctx["health"]),
        "--health-timeout",
        "25",
        "--restart-cmd",
        str(ctx["restart"]),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _snapshot(root: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel.startswith(("var/lib/nexus/", "manager.")) or "__pycache__" in rel:
            continue
        st = p.lstat()
        out[rel] = (st.st_mode, st.st_mtime)
    return out


def test_units_as_shipped_pass_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    paths = []
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        for key in (
            "UMask=0077",
            "ProtectSystem=strict",
            "ReadWritePaths=",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
        ):
            assert key in text, f"{unit.name}: {key}"
        assert "/opt/nexus/current/bin/" in text
        # the binaries do not exist on this machine: point ExecStart at one that does
        copy = tmp_path / unit.name
        copy.write_text(re.sub(r"/opt/nexus/current/bin/\S+", "/bin/true", text))
        paths.append(str(copy))
    res = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    noise = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert not noise, noise


def test_install_verify_upgrade_rollback_uninstall(scratch: dict[str, object]) -> None:
    root = Path(str(scratch["root"]))
    wheel1, wheel2, wheel3 = scratch["wheels"]  # type: ignore[misc]
    v1 = re.match(r"nexus_microvm-([^-]+)-", Path(wheel1).name).group(1)  # type: ignore[union-attr]

    # install
    res = _installer(
        scratch,
        "install",
        "--wheel",
        str(wheel1),
        "--requirements",
        str(scratch["req"]),
        "--port",
        str(scratch["port"]),
        "--agent",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^nexus:x:\d+:\d+:", (root / "etc/passwd").read_text(), re.M)
    assert (root / "opt/nexus/current").resolve() == root / "opt/nexus" / v1
    assert (root / f"opt/nexus/{v1}/bin/nexus-manager").exists()
    # the code is readable by the nexus user whatever the umask of whoever installed it
    assert (root / f"opt/nexus/{v1}/bin/nexus-manager").stat().st_mode & 0o005 == 0o005
    assert (root / f"opt/nexus/{v1}/pyvenv.cfg").stat().st_mode & 0o004
    for name in ("manager.toml", "agent.toml"):
        assert (root / "etc/nexus" / name).stat().st_mode & 0o777 == 0o640
    assert (root / "etc/nexus/agent.env").stat().st_mode & 0o777 == 0o600
    agent_env = (root / "etc/nexus/agent.env").read_text()
    assert f"NEXUS_MANAGER_URL=http://127.0.0.1:{scratch['port']}\n" in agent_env
    assert "NEXUS_JOIN_TOKEN=\n" in agent_env  # minted once the manager has run
    for d in ("var/lib/nexus", "var/cache/nexus", "var/lib/nexus-agent"):
        assert (root / d).stat().st_mode & 0o777 == 0o700
    assert (root / "var/lib/nexus/nexus.db").exists()  # migrations ran
    manager_unit = (root / "etc/systemd/system/nexus-manager.service").read_text()
    assert f"ExecStart={root}/opt/nexus/current/bin/nexus-manager serve" in manager_unit
    assert f"ReadWritePaths={root}/var/lib/nexus {root}/var/cache/nexus" in manager_unit
    agent_unit = (root / "etc/systemd/system/nexus-agent.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", agent_unit, re.M).group(1)  # type: ignore[union-attr]
    assert Path(exec_start).exists()

    # a second install changes nothing, and never rewrites the configs
    conf = root / "etc/nexus/manager.toml"
    conf.write_text(conf.read_text() + "# the operator's edit\n")
    before = _snapshot(root)
    res = _installer(
        scratch,
        "install",
        "--wheel",
        str(wheel1),
        "--requirements",
        str(scratch["req"]),
        "--port",
        "1",
        "--no-start",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing changed" in res.stdout
    assert _snapshot(root) == before
    assert conf.read_text().endswith("# the operator's edit\n")

    # start by hand from the unit's lines; verify
    subprocess.run(["sh", "-c", str(scratch["restart"])], check=True)
    res = _installer(scratch, "verify")
    assert res.returncode == 0, res.stdout + res.stderr + (root / "manager.log").read_text()[-3000:]
    assert "FAIL" not in res.stdout
    assert "systemd-analyze verify: clean" in res.stdout or not shutil.which("systemd-analyze")

    # the wheel carries the web console, and the installed manager serves it at /
    base = f"http://127.0.0.1:{scratch['port']}"
    page = httpx.get(base + "/", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"], page.text
    asset = re.search(r'src="(/assets/[^"]+\.js)"', page.text)
    assert asset, page.text
    assert httpx.get(base + asset.group(1), timeout=10).status_code == 200
    [index] = (root / f"opt/nexus/{v1}").glob(
        "lib/python*/site-packages/nexus/manager/ui/index.html"
    )
    assert index.stat().st_mode & 0o004  # readable by the nexus user whatever the umask

    # the local agent's join token, minted through the installed nexus-manager
    sys.path.insert(0, str(INSTALL.parent))
    try:
        from importlib.machinery import SourceFileLoader

        installer = SourceFileLoader("nexus_install", str(INSTALL)).load_module()
    finally:
        sys.path.pop(0)
    assert installer.fill_join_token(installer.Layout(root), root / "opt/nexus/current")
    assert re.search(
        r"^NEXUS_JOIN_TOKEN=nxj_[\w-]+$", (root / "etc/nexus/agent.env").read_text(), re.M
    )
    assert (root / "etc/nexus/agent.env").stat().st_mode & 0o777 == 0o600

    # upgrade: new venv beside the old one, database copied, health checked
    res = _installer(
        scratch, "upgrade", "--wheel", str(wheel2), "--requirements", str(scratch["req"])
    )
    assert res.returncode == 0, res.stdout + res.stderr + (root / "manager.log").read_text()[-3000:]
    assert (root / "opt/nexus/current").resolve().name == "0.999.1"
    assert (root / "opt/nexus/previous").resolve().name == v1
    assert list((root / "var/lib/nexus/backups").glob(f"pre-upgrade-{v1}-*.db"))
    out = subprocess.run(
        [str(root / "opt/nexus/current/bin/nexus-manager"), "version"],
        capture_output=True,
        text=True,
    )
    assert "0.999.1" in out.stdout

    # an upgrade whose health check fails rolls back by itself
    res = _installer(
        scratch, "upgrade", "--wheel", str(wheel3), "--requirements", str(scratch["req"])
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "rolling back" in res.stdout and "health ok" in res.stdout
    assert (root / "opt/nexus/current").resolve().name == "0.999.1"
    assert (root / "opt/nexus/previous").resolve().name == v1
    assert _installer(scratch, "verify").returncode == 0

    # rollback by hand
    res = _installer(scratch, "rollback")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (root / "opt/nexus/current").resolve().name == v1
    assert "health ok" in res.stdout

    # uninstall keeps configs and state; --purge removes them
    res = _installer(scratch, "uninstall")
    assert res.returncode == 0
    assert not (root / "opt/nexus").exists() and conf.exists()
    res = _installer(scratch, "uninstall", "--purge")
    assert res.returncode == 0
    assert not (root / "etc/nexus").exists() and not (root / "var/lib/nexus").exists()
