"""deploy/docker/: no container engine runs where Nexus is built and tested, so the
Dockerfiles and the compose file are checked here instead of built: every file they copy
exists (or is made by ``make dist``), every setting they name is a setting of Nexus, every
command they run is a console script with those options, and the agent gets /dev/kvm and
NET_ADMIN."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import typer
import yaml

from nexus.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FIELDS = set(Settings.model_fields)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        ["scripts/build-dist.sh"],
        cwd=ROOT,
        env={**os.environ, "DIST_DIR": str(out)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.mark.parametrize("name", ["Dockerfile.manager", "Dockerfile.agent"])
def test_dockerfile_copies_files_that_exist(name: str, dist: Path) -> None:
    copies = [rest for word, rest in _instructions(DOCKER / name) if word == "COPY"]
    assert copies
    for rest in copies:
        *sources, _dest = shlex.split(rest)
        for src in sources:
            if src.startswith("dist/"):  # made by make dist (scripts/build-dist.sh)
                assert list(dist.glob(src.removeprefix("dist/"))), (
                    f"{name}: make dist makes no {src}"
                )
            else:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: no such file"


@pytest.mark.parametrize("name", ["Dockerfile.manager", "Dockerfile.agent"])
def test_dockerfile_settings_and_commands_exist(name: str) -> None:
    ins = _instructions(DOCKER / name)
    text = (DOCKER / name).read_text()
    for var in re.findall(r"\bNEXUS_([A-Z_]+)=", text):
        if var not in ("CONFIG", "MANAGER_URL", "JOIN_TOKEN"):
            assert var.lower() in FIELDS, f"{name}: NEXUS_{var} is no setting"
    for conf in re.findall(r"deploy/docker/(\w+\.toml)", text):
        keys = tomllib.loads((DOCKER / conf).read_text())
        assert set(keys) <= FIELDS, f"{conf}: unknown settings {set(keys) - FIELDS}"
    entry = next(rest for word, rest in ins if word == "ENTRYPOINT")
    scripts = PYPROJECT["project"]["scripts"]
    named = re.findall(r"/opt/nexus/bin/(nexus-[a-z]+)", entry)
    assert named and all(n in scripts for n in named), entry
    # the packages the image installs are the ones install-deps.sh installs on a host
    deps = (ROOT / "scripts" / "install-deps.sh").read_text()
    apt = re.search(r"--no-install-recommends\s+(.*?)\s+&&", text.replace("\\\n", " "), re.S)
    assert apt is not None
    for pkg in apt.group(1).split():
        assert re.search(rf"\b{re.escape(pkg)}\b", deps), f"{name}: {pkg} not in install-deps.sh"


def test_manager_cmd_matches_the_serve_command() -> None:
    from nexus.manager.admin_cli import app

    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    opts = {o for p in serve.params for o in p.opts}
    cmd = next(rest for word, rest in _instructions(DOCKER / "Dockerfile.manager") if word == "CMD")
    args = yaml.safe_load(cmd)
    assert args[0] == "serve"
    for arg in args[1:]:
        if arg.startswith("--"):
            assert arg in opts, f"nexus-manager serve has no {arg}"


def test_agent_entrypoint_options_exist() -> None:
    from nexus.agent import daemon

    src = Path(daemon.__file__).read_text()
    for opt in ("--manager", "--join-token"):
        assert f'"{opt}"' in src, opt


def test_compose_file() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    svcs = compose["services"]
    assert set(svcs) == {"db", "manager", "agent"}
    for name in ("manager", "agent"):
        build = svcs[name]["build"]
        ctx = (DOCKER / build["context"]).resolve()
        assert ctx == ROOT
        assert (ctx / build["dockerfile"]).exists()
        for key in svcs[name].get("environment", {}):
            var = key.removeprefix("NEXUS_").lower()
            assert var in FIELDS or key in ("NEXUS_MANAGER_URL", "NEXUS_JOIN_TOKEN"), key
    assert svcs["manager"]["environment"]["NEXUS_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@db/" in svcs["manager"]["environment"]["NEXUS_DATABASE_URL"]
    assert svcs["db"]["image"].startswith("postgres")
    agent = svcs["agent"]
    assert any(d.split(":")[0] == "/dev/kvm" for d in agent["devices"])
    assert "NET_ADMIN" in agent["cap_add"]
    assert set(compose["volumes"]) >= {"db", "manager", "agent"}
