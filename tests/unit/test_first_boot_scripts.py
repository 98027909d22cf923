"""The first-boot shell scripts the manager runs in guests (features/guest/firstboot.py),
run here by /bin/sh with their guest paths moved under a temporary directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nexus.manager.features.guest import firstboot as fb


def _run(tmp: Path, script: str, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    text = script.replace("/root", f"{tmp}/root").replace("/var/lib/nexus", f"{tmp}/nexus")
    p = subprocess.run(
        ["/bin/sh", "-c", text, "nexus-first-boot", *args],
        input=stdin,
        capture_output=True,
        check=False,
    )
    return p.returncode, (p.stdout + p.stderr).decode()


def test_keys_are_appended_once_with_tight_modes(tmp_path: Path) -> None:
    ssh = tmp_path / "root/.ssh"
    ssh.mkdir(parents=True)
    (ssh / "authorized_keys").write_text("ssh-ed25519 OLD kept")  # no final newline
    assert _run(tmp_path, fb._KEYS_SH, stdin=b"ssh-ed25519 AAAA a\nssh-ed25519 BBBB b\n")[0] == 0
    assert _run(tmp_path, fb._KEYS_SH, stdin=b"ssh-ed25519 AAAA a\n\nssh-ed25519 CCCC\n")[0] == 0
    assert (ssh / "authorized_keys").read_text() == (
        "ssh-ed25519 OLD kept\nssh-ed25519 AAAA a\nssh-ed25519 BBBB b\nssh-ed25519 CCCC\n"
    )
    assert ssh.stat().st_mode & 0o777 == 0o700
    assert (ssh / "authorized_keys").stat().st_mode & 0o777 == 0o600


def test_the_script_runs_once_and_its_exit_code_and_output_come_back(tmp_path: Path) -> None:
    script = b"#!/bin/sh\necho out; echo err >&2; echo x >> " + str(tmp_path).encode() + b"/ran\n"
    assert _run(tmp_path, fb._USER_DATA_SH, stdin=script + b"exit 4\n")[0] == 0
    assert (tmp_path / "nexus/user-data").stat().st_mode & 0o777 == 0o600
    assert _run(tmp_path, fb._RUN_SH, "run") == (4, "out\nerr\n")
    code, out = _run(tmp_path, fb._RUN_SH, "run")  # a second attempt: the marker stops it
    assert code == 0 and out.startswith("first boot already done")
    assert (tmp_path / "ran").read_text() == "x\n"


def test_plain_user_data_is_only_written(tmp_path: Path) -> None:
    assert _run(tmp_path, fb._USER_DATA_SH, stdin=b"token=abc\n")[0] == 0
    assert _run(tmp_path, fb._RUN_SH, "write") == (0, "")
    assert (tmp_path / "nexus/user-data").read_text() == "token=abc\n"
    assert (tmp_path / "nexus/first-boot.done").exists()
    assert fb.is_script("#!/bin/sh\n") and not fb.is_script("token=abc") and not fb.is_script(None)
