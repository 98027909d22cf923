"""``make dist`` and the client-only install: the wheel and sdist build and pass ``twine
check``; ``pip install`` of the wheel into a fresh virtualenv pulls no server package, every
SDK and CLI module imports there, ``nexus --help`` works, and the server commands say which
extra they need instead of a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _norm(re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0])


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        ["scripts/build-dist.sh"],
        cwd=ROOT,
        env={**os.environ, "DIST_DIR": str(out)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("PASSED") == 2, res.stdout  # twine check: wheel and sdist
    return out


def test_version_comes_from_one_place(dist_dir: Path) -> None:
    from nexus import __version__

    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert "version" not in PYPROJECT["project"]
    wheels = list(dist_dir.glob("nexus_microvm-*.whl"))
    assert [w.name for w in wheels] == [f"nexus_microvm-{__version__}-py3-none-any.whl"]
    assert (dist_dir / f"nexus_microvm-{__version__}.tar.gz").exists()


def test_the_wheel_and_sdist_carry_the_built_web_console(dist_dir: Path) -> None:
    import tarfile
    import zipfile

    wheel = next(dist_dir.glob("nexus_microvm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "nexus/manager/ui/index.html" in names
    index = zipfile.ZipFile(wheel).read("nexus/manager/ui/index.html").decode()
    assets = re.findall(r'(?:src|href)="/(assets/[^"]+)"', index)
    assert assets and all(f"nexus/manager/ui/{a}" in names for a in assets), (assets, names[:20])
    sdist = next(dist_dir.glob("nexus_microvm-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        assert any(n.endswith("/ui/dist/index.html") for n in tar.getnames())


def test_server_requirements_are_pinned_with_hashes(dist_dir: Path) -> None:
    text = (dist_dir / "requirements-server.txt").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==", text, re.M)
    names = {_norm(p) for p in pins}
    for req in PYPROJECT["project"]["optional-dependencies"]["server"]:
        assert _req_name(req) in names, req
    assert text.count("--hash=sha256:") >= len(pins)


def test_client_wheel_installs_alone(dist_dir: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    wheel = next(dist_dir.glob("nexus_microvm-*.whl"))
    res = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True
    ).stdout
    installed = {_norm(line.split("==")[0]) for line in listed.splitlines() if "==" in line}
    server = {_req_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["server"]}
    # what the server extra names, and what it would have brought along
    server |= {"starlette", "uvicorn", "greenlet", "mako", "cffi", "argon2-cffi-bindings"}
    assert not installed & server, f"server packages pulled in: {sorted(installed & server)}"
    client = {_req_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert client <= installed
    assert len(installed) < 30, sorted(installed)  # the SDK and CLI, and little else

    # every SDK and CLI module imports without the server packages
    code = (
        "import importlib, pkgutil, nexus.client, nexus.cli\n"
        "for pkg in (nexus.client, nexus.cli):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]

    bindir = env_dir / "bin"
    res = subprocess.run(
        [str(bindir / "nexus"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert "nexus login" in res.stdout
    for cmd in ("nexus-manager", "nexus-agent"):
        res = subprocess.run([str(bindir / cmd)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 1
        assert 'pip install "nexus-microvm[server]"' in res.stderr
        assert "Traceback" not in res.stderr
