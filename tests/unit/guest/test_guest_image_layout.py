"""The default image carries the whole guest agent, and the copy runs on its own.

The image builder copies ``nexus/guest/*.py`` into ``/opt/nexus/lib/nexus/guest/`` and the
init runs ``PYTHONPATH=/opt/nexus/lib python3 -m nexus.guest.agent``. The agent is split
into several modules, so a module the builder missed (or a guest module importing one the
image lacks) would only show once a real guest booted: these tests lay the package out as
the builder does and import and run the agent from there, with nothing else of nexus
importable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nexus.guest.client import GuestClient
from nexus.images import build as imagebuild

from .conftest import AGENT_MODULES, GUEST_DIR, GUEST_MODULES, start_agent, stop_agent
from .test_guest_minimal_python import _fetch_minimal_python

# Run isolated (-I: no PYTHONPATH, no user site; -S: no site-packages, so not the editable
# install of nexus either): only the image's lib directory and the standard library.
PROBE = """
import sys
lib = sys.argv[1]
sys.path.insert(0, lib)
import nexus.guest.agent
loaded = sorted(n for n in sys.modules if n == "nexus" or n.startswith("nexus."))
outside = [n for n in loaded if not (getattr(sys.modules[n], "__file__", "") or "").startswith(lib)]
assert not outside, outside
print(" ".join(loaded))
"""


def image_lib(root: Path) -> Path:
    """Lay out the guest package under ``root`` as the image builder does; its lib dir."""
    imagebuild._install_guest_agent(root, imagebuild._guest_files())
    return root / "opt" / "nexus" / "lib"


def test_the_image_builder_copies_every_guest_module() -> None:
    copied = set(imagebuild._guest_files())
    assert set(GUEST_MODULES) <= copied, set(GUEST_MODULES) - copied
    assert imagebuild.GUEST_SRC == GUEST_DIR


def test_the_image_cache_key_covers_every_guest_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Editing any guest module makes a new default image (else old images keep the old
    agent)."""
    src = tmp_path / "guest"
    shutil.copytree(GUEST_DIR, src, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(imagebuild, "GUEST_SRC", src)
    kernel = imagebuild.KernelArtifacts("linux-image-cloud-amd64", "1", "6.1.0-1", tmp_path)

    def key() -> str:
        return imagebuild.image_inputs("default", kernel, "http://deb.example/debian", 512)

    base = key()
    for name in GUEST_MODULES:
        path = src / name
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert key() != base, name
        path.write_bytes(original)
    assert key() == base


def _interpreters() -> list[tuple[str, dict[str, str]]]:
    found = [(sys.executable, {})]
    root = _fetch_minimal_python()
    if root is not None:
        found.append((str(root / "usr" / "bin" / "python3.11"), {"PYTHONHOME": str(root / "usr")}))
    return found


def test_the_image_copy_imports_alone(tmp_path: Path) -> None:
    """``import nexus.guest.agent`` from the image's copy needs nothing else of nexus (and
    never the host-only client), under this interpreter and Debian's python3.11-minimal
    when it can be fetched."""
    lib = image_lib(tmp_path)
    expected = {"nexus", "nexus.guest"} | {
        f"nexus.guest.{name[:-3]}" for name in AGENT_MODULES if name != "__init__.py"
    }
    for python, env in _interpreters():
        res = subprocess.run(
            [python, "-I", "-S", "-c", PROBE, str(lib)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, (python, res.stderr)
        loaded = set(res.stdout.split())
        assert loaded == expected, (python, loaded ^ expected)


async def test_the_image_copy_serves(tmp_path: Path) -> None:
    """The agent started as the init starts it (``PYTHONPATH=<lib> python3 -m
    nexus.guest.agent``), from the image's copy, answers a HELLO and runs a command."""
    lib = image_lib(tmp_path / "root")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(lib)}
    proc = start_agent(tmp_path / "agent.sock", env=env, python_flags=("-S",))
    try:
        async with await GuestClient.connect(str(tmp_path / "agent.sock"), timeout=5) as c:
            facts = await c.hello()
            assert set(facts["ops"]) >= {"exec", "shell", "metrics", "file_read"}
            result = await c.exec(["sh", "-c", "echo split"])
            assert (result.exit_code, result.stdout) == (0, b"split\n")
    finally:
        stop_agent(proc)


def test_the_guest_package_is_precompiled_for_the_guests_python(tmp_path: Path) -> None:
    """Every VM's root disk is a fresh copy of the image: without pycs each guest compiles
    the agent at boot and the container runtime at its first use (seconds under TCG)."""
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    tag = sys.implementation.cache_tag  # e.g. cpython-311
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    (tmp_path / "usr" / "bin" / "python3").symlink_to(f"python{ver}")
    lib = image_lib(tmp_path)
    pyc = lib / "nexus" / "guest" / "__pycache__" / f"container.{tag}.pyc"
    assert pyc.is_file() and pyc.stat().st_mode & 0o777 == 0o644
    assert (pyc.parent.stat().st_mode & 0o777) == 0o755
    flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
    assert flags == 0b11  # hash-based and checked: valid whatever the files' times
    # another Python in the guest: no pycs of ours (it compiles its own)
    other = tmp_path / "other"
    (other / "usr" / "bin").mkdir(parents=True)
    (other / "usr" / "bin" / "python3").symlink_to("python3.99")
    assert not list(image_lib(other).rglob("*.pyc"))


def test_the_image_has_poweroff_and_halt_for_its_users(tmp_path: Path) -> None:
    """Debian's minbase has no ``poweroff``: the image's are busybox's (they signal the init,
    which powers off cleanly), on the init's PATH."""
    imagebuild._install_common(tmp_path, imagebuild._guest_files())
    for cmd in ("poweroff", "halt"):
        link = tmp_path / "usr" / "local" / "sbin" / cmd
        assert os.readlink(link) == "/usr/local/bin/busybox"
    assert "/usr/local/sbin" in imagebuild.ROOTFS_INIT.split("export PATH=", 1)[1].split("\n")[0]
    assert "trap halt_now TERM INT USR1 USR2" in imagebuild.ROOTFS_INIT  # what they send
