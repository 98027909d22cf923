"""``nexus vm create --ssh-key/--user-data`` (issue 20): reading keys and user data, and the
server's checks reaching the user (the guest side: tests/vm/test_first_boot.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import typer

from nexus.cli.commands.vms import _read_ssh_key, _read_user_data
from tests.cli.conftest import Runner


def _key(comment: str = "me@host") -> str:
    blob = (11).to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def test_ssh_key_is_a_key_or_a_pub_file(tmp_path: Path) -> None:
    assert _read_ssh_key(f"  {_key()}\n") == [_key()]
    pub = tmp_path / "id.pub"
    pub.write_text(f"# two keys\n{_key('a')}\n\n{_key('b')}\n")
    assert _read_ssh_key(str(pub)) == [_key("a"), _key("b")]
    empty = tmp_path / "empty.pub"
    empty.write_text("# nothing\n")
    with pytest.raises(typer.BadParameter, match="no public key"):
        _read_ssh_key(str(empty))
    with pytest.raises(typer.BadParameter, match="neither a public key nor a readable file"):
        _read_ssh_key(str(tmp_path / "missing.pub"))
    script = tmp_path / "setup.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    assert _read_user_data(str(script)) == "#!/bin/sh\ntrue\n"


def test_vm_create_flags(logged_in: Runner, tmp_path: Path) -> None:
    r = logged_in("vm", "create", "x", "--ssh-key", str(tmp_path / "missing.pub"))
    assert r.code == 2 and "--ssh-key" in r.err
    r = logged_in("vm", "create", "x", "--user-data", str(tmp_path / "missing.sh"))
    assert r.code == 2 and "--user-data" in r.err
    r = logged_in("vm", "create", "x", "--ssh-key", _key(), "--from-template", "t")
    assert r.code == 2 and "first boot" in r.err
    # the server's check reaches the user (a key of the wrong type)
    r = logged_in("vm", "create", "x", "--ssh-key", "ssh-ed25519 Zm9vYmFy")
    assert r.code == 1 and "ssh_keys[0]" in r.err, r.err
    # user data from standard input, too big: the server says so
    r = logged_in("vm", "create", "x", "--user-data", "-", input="x" * (64 * 1024 + 1))
    assert r.code == 1 and "user_data" in r.err, r.err
