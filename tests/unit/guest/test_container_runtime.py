"""The guest's container runtime (nexus.guest.container) run on this host inside a private
mount namespace (``unshare -m``), with a directory as the image: overlay, pivot_root, the
image's user, env and workdir, PID-1 signal forwarding and reaping, numbered logs, exec.
The same code runs inside real guests in tests/vm/test_containers.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nexus.guest.container import resolve_in_root

SRC = Path(__file__).resolve().parents[3] / "src"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("unshare") is None
    or not Path("/bin/busybox").exists()
    or "overlay" not in Path("/proc/filesystems").read_text(),
    reason="needs root, unshare, busybox and overlayfs",
)

SCRIPT = """
set -e
C="{py} -S -m nexus.guest.container"
$C start --lower-dir {lower} --user app --workdir /data --env FOO=bar \
  --volume {vol}:rw:/mnt/vol --volume {rovol}:ro:/data/ro -- \
  sh -c 'trap "echo got-TERM; exit 3" TERM; echo hello $FOO $(id -u) $(pwd); (sleep 0.1 &);
         while true; do sleep 0.1; done'
sleep 1
echo "STATUS $($C status)"
echo "EXEC $($C exec -- cat /data/marker)"
echo "ROOT $($C exec -- ls /)"
echo "ZOMBIES $($C exec -- sh -c 'cat /proc/[0-9]*/stat' | grep -c ') Z ' || true)"
echo "VOL $($C exec --user 0 -- sh -c 'echo through-the-volume > /mnt/vol/f; cat /data/ro/g')"
echo "RO $($C exec --user 0 -- sh -c 'echo x > /data/ro/x' 2>/dev/null \
  && echo writable || echo refused)"
echo "BADVOL $($C start --lower-dir {lower} --volume {vol}:rw:/proc/x -- true 2>&1)"
echo "SHELL $($C shell --user app -- sh -c 'echo $(id -u) $FOO $HOME $TERM' </dev/null)"
echo "LOGIN $(echo 'echo in-login-shell $(id -u)' | $C shell)"
echo "STOP $($C stop --timeout 5)"
$C release --timeout 1 >/dev/null
echo "LEFT $(grep -c -e '/vol/' -e '/mnt/vol' -e '/data/ro' /proc/self/mounts)"
$C logs --after 0
"""


def test_runtime_end_to_end(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    for d in ("bin", "etc", "data"):
        (lower / d).mkdir(parents=True)
        (lower / d).chmod(0o755)  # as an image's layers set them, whatever the umask
    lower.chmod(0o755)
    shutil.copy("/bin/busybox", lower / "bin" / "busybox")
    for applet in ("sh", "echo", "cat", "ls", "id", "sleep", "pwd", "grep"):
        (lower / "bin" / applet).symlink_to("/bin/busybox")
    (lower / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1000::/data:/bin/sh\n")
    (lower / "data" / "marker").write_text("IMAGE-FILE\n")
    for f in ("etc/passwd", "data/marker"):
        (lower / f).chmod(0o644)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": str(SRC),
        "NEXUS_CTR_BUSYBOX": "/bin/busybox",
        "NEXUS_CTR_BASE": str(tmp_path / "run"),
        "NEXUS_CTR_PERSIST": str(tmp_path / "persist"),
    }
    vol, rovol = tmp_path / "vol", tmp_path / "rovol"
    for d in (vol, rovol):
        d.mkdir()
        d.chmod(0o755)
    (rovol / "g").write_text("read-only-file\n")
    script = SCRIPT.format(py=sys.executable, lower=lower, vol=vol, rovol=rovol)
    res = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "STATUS state=running" in out
    assert "EXEC IMAGE-FILE" in out
    assert "ROOT bin\ndata\ndev\netc\nmnt\nproc\nsys\ntmp" in out  # the image's root, nothing else
    assert "ZOMBIES 0" in out  # the orphaned sleep was reaped by the container's init
    assert "VOL read-only-file" in out and (vol / "f").read_text() == "through-the-volume\n"
    assert "RO refused" in out and not (rovol / "x").exists()
    assert "BADVOL nexus-container: mount path '/proc/x' is under /proc" in out
    assert "SHELL 1000 bar /data xterm-256color" in out
    assert "LOGIN in-login-shell 0" in out
    assert "STOP state=exited code=3" in out
    assert "LEFT 0" in out  # release unmounted the volumes  # SIGTERM reached the entrypoint's trap
    lines = [line.split(" ", 3) for line in out.splitlines() if line[:1].isdigit()]
    texts = [(p[2], p[3]) for p in lines]
    assert ("o", "hello bar 1000 /data") in texts and ("o", "got-TERM") in texts
    assert [int(p[0]) for p in lines] == list(range(1, len(lines) + 1))


def test_paths_resolve_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "busybox").write_text("")
    (tmp_path / "bin" / "sh").symlink_to("/bin/busybox")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("")
    (tmp_path / "up").symlink_to("../../../../etc")  # '..' stops at the container's root
    assert resolve_in_root(str(tmp_path), "/bin/sh") == f"{tmp_path}/bin/busybox"
    assert resolve_in_root(str(tmp_path), "/up/passwd") == f"{tmp_path}/etc/passwd"
    assert resolve_in_root(str(tmp_path), "/missing") is None


FAST = """
set -e
S="/bin/busybox sh {src}/nexus/guest/container-start.sh"
echo "FIRST $($S --lower-dir {lower} --user app -- sh -c 'echo fast-start; sleep 30')"
for i in $(seq 100); do  # running = its init forked; the entrypoint's setup may still run
  {py} -S -m nexus.guest.container logs --after 0 | grep -q fast-start && break
  sleep 0.1
done
echo "AGAIN $($S --lower-dir {lower} -- true 2>&1 || echo refused)"
echo "EXEC $({py} -S -m nexus.guest.container exec -- id -u)"
{py} -S -m nexus.guest.container stop --timeout 1 >/dev/null
echo "BAD $($S --lower-dir {lower} -- nosuchcmd 2>&1 || echo failed)"
ls {run}
{py} -S -m nexus.guest.container logs --after 0
"""


def test_the_fast_start_script(tmp_path: Path) -> None:
    """``container-start.sh`` (what the manager runs): ``boot`` as PID 1 of a new PID
    namespace, one Python start; the state line of this start, or its error."""
    lower = tmp_path / "lower"
    (lower / "bin").mkdir(parents=True)
    (lower / "etc").mkdir()
    for d in (lower, lower / "bin", lower / "etc"):
        d.chmod(0o755)
    shutil.copy("/bin/busybox", lower / "bin" / "busybox")
    for applet in ("sh", "echo", "id", "sleep", "true"):
        (lower / "bin" / applet).symlink_to("/bin/busybox")
    (lower / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
    (lower / "etc" / "passwd").chmod(0o644)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": str(SRC),
        "NEXUS_CTR_BUSYBOX": "/bin/busybox",
        "NEXUS_CTR_BASE": str(tmp_path / "run"),
        "NEXUS_CTR_PERSIST": str(tmp_path / "persist"),
        "NEXUS_CTR_PYTHON": sys.executable,
    }
    script = FAST.format(src=SRC, py=sys.executable, lower=lower, run=tmp_path / "run")
    res = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    first = next(line for line in out.splitlines() if line.startswith("FIRST "))
    assert first.startswith("FIRST state=running pid=") and " token=" in first, out
    assert "AGAIN nexus-container: the container is already running" in out, out
    assert "EXEC 0" in out  # (exec's user is the caller's: the manager passes the image's)
    assert "BAD nexus-container: nosuchcmd: command not found" in out, out
    assert "err." not in out  # the error files are removed once read
    assert " o fast-start" in out
