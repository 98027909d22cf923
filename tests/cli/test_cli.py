"""The real ``nexus`` console script against a real manager (subprocesses)."""

from __future__ import annotations

import json
import stat
import tomllib
import uuid
from pathlib import Path

import yaml

from tests.cli.conftest import ADMIN_PASSWORD, Runner, free_port


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_login_password_stdin_stores_session_0600(
    nexus: Runner, manager_url: str, config_dir: Path
) -> None:
    r = nexus(
        "login",
        "--url",
        manager_url,
        "--username",
        "admin",
        "--password-stdin",
        input=ADMIN_PASSWORD + "\n",
    )
    assert r.code == 0, r.err
    logged_in = nexus
    path = config_dir / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = tomllib.loads(path.read_text())
    assert cfg["current_context"] == "default"
    ctx = cfg["contexts"]["default"]
    assert ctx["access_token"] and ctx["refresh_token"] and ctx["username"] == "admin"

    r = logged_in("auth", "status")
    assert r.code == 0, r.err
    assert "admin" in r.out and "session" in r.out
    data = json.loads(logged_in("auth", "status", "-o", "json").out)
    assert data["user"]["username"] == "admin"
    assert data["auth"] == "session"


def test_read_token_can_list_but_not_create(logged_in: Runner) -> None:
    r = logged_in("-q", "auth", "token", "create", _name("ci"), "--scope", "read")
    assert r.code == 0, r.err
    secret = r.out.strip()
    assert secret.startswith("nxs_")

    env = {"NEXUS_TOKEN": secret}
    listed = logged_in("user", "list", "-o", "json", env=env)
    assert listed.code == 0, listed.err
    assert any(u["username"] == "admin" for u in json.loads(listed.out))

    denied = logged_in(
        "user", "create", _name("bob"), "--password-stdin", input="long-password\n", env=env
    )
    assert denied.code == 1
    line = _one_error_line(denied.err)
    assert "read scope only" in line
    assert "request id" in line

    tokens = json.loads(logged_in("auth", "token", "list", "-o", "json").out)
    tok = next(t for t in tokens if secret.startswith(t["prefix"]))
    assert tok["scopes"] == ["read"]
    assert logged_in("auth", "token", "delete", tok["id"]).code == 0
    after = logged_in("user", "list", env=env)
    assert after.code == 1
    _one_error_line(after.err)


def test_user_create_list_table_json_and_audit(logged_in: Runner) -> None:
    name = _name("alice")
    r = logged_in(
        "user",
        "create",
        name,
        "--role",
        "viewer",
        "--password-stdin",
        "-o",
        "json",
        input="s3cret-password\n",
    )
    assert r.code == 0, r.err
    created = json.loads(r.out)
    assert created["username"] == name and created["role"] == "viewer"
    assert created["id"].startswith("usr_")

    table = logged_in("user", "list")
    assert table.code == 0
    assert "USERNAME" in table.out and name in table.out

    users = json.loads(logged_in("user", "list", "-o", "json").out)
    assert {"id", "username", "role", "disabled", "created_at"} <= set(users[0])
    assert name in [u["username"] for u in users]

    ids = logged_in("--quiet", "user", "list").out.split()
    assert created["id"] in ids

    got = yaml.safe_load(logged_in("user", "get", name, "-o", "yaml").out)
    assert got["id"] == created["id"]

    upd = json.loads(logged_in("user", "update", name, "--disable", "-o", "json").out)
    assert upd["disabled"] is True

    events = json.loads(
        logged_in("audit", "list", "--resource-id", created["id"], "-o", "json").out
    )
    actions = {e["action"] for e in events}
    assert "user.create" in actions
    assert all(e["actor_username"] == "admin" for e in events)
    assert all(e["resource_id"] == created["id"] for e in events)

    assert logged_in("user", "delete", created["id"], "--yes").code == 0
    gone = logged_in("user", "get", created["id"])
    assert gone.code == 1
    assert "not found" in _one_error_line(gone.err)


def test_connection_refused_is_one_line(nexus: Runner) -> None:
    port = free_port()
    r = nexus("user", "list", env={"NEXUS_URL": f"http://127.0.0.1:{port}", "NEXUS_TOKEN": "x"})
    assert r.code == 1
    line = _one_error_line(r.err)
    assert "cannot reach" in line and str(port) in line
    assert r.out == ""


def test_not_logged_in_and_bad_config(nexus: Runner, config_dir: Path) -> None:
    r = nexus("user", "list")
    assert r.code == 1
    _one_error_line(r.err)
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.toml").write_text("this is [not toml")
    r = nexus("auth", "status")
    assert r.code == 1
    assert "invalid config file" in _one_error_line(r.err)


def test_usage_errors_exit_2(nexus: Runner) -> None:
    assert nexus("user", "lisst").code == 2
    assert nexus("user", "create").code == 2
    assert nexus("--output", "xml", "user", "list").code == 2
    assert "Traceback" not in nexus("audit", "list", "--outcome", "maybe").err


def test_contexts_and_expired_session_refresh(
    logged_in: Runner, manager_url: str, config_dir: Path
) -> None:
    # a second context holding a read-only API token
    secret = logged_in("-q", "auth", "token", "create", _name("ro"), "--scope", "read").out.strip()
    r = logged_in(
        "--context", "ro", "login", "--url", manager_url, "--token-stdin", input=secret + "\n"
    )
    assert r.code == 0, r.err
    listed = json.loads(logged_in("context", "list", "-o", "json").out)
    assert {c["name"]: c["current"] for c in listed} == {"default": False, "ro": True}
    assert json.loads(logged_in("auth", "status", "-o", "json").out)["auth"] == "api_token"

    assert logged_in("context", "use", "default").code == 0
    assert json.loads(logged_in("auth", "status", "-o", "json").out)["auth"] == "session"
    # --context overrides the current one, also after the subcommand
    assert (
        json.loads(logged_in("auth", "status", "-o", "json", "--context", "ro").out)["auth"]
        == "api_token"
    )
    assert logged_in("context", "use", "nope").code == 1

    # an expired/invalid access token: the CLI refreshes and saves the rotated pair
    path = config_dir / "config.toml"
    before = tomllib.loads(path.read_text())["contexts"]["default"]
    path.write_text(path.read_text().replace(before["access_token"], "expired.jwt.token"))
    r = logged_in("auth", "status", "-o", "json")
    assert r.code == 0, r.err
    after = tomllib.loads(path.read_text())["contexts"]["default"]
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] not in ("expired.jwt.token", before["access_token"])

    assert logged_in("context", "delete", "ro").code == 0
    assert [c["name"] for c in json.loads(logged_in("context", "list", "-o", "json").out)] == [
        "default"
    ]

    assert logged_in("logout").code == 0
    r = logged_in("auth", "status")
    assert r.code == 1
    assert "not logged in" in _one_error_line(r.err)


def test_version_operations_and_bad_password(logged_in: Runner, manager_url: str) -> None:
    v = json.loads(logged_in("version", "-o", "json").out)
    assert v["client"] and v["server"] == v["client"]
    assert json.loads(logged_in("operation", "list", "-o", "json").out) == []
    r = logged_in("operation", "get", "op_missing")
    assert r.code == 1
    assert "not found" in _one_error_line(r.err)
    bad = logged_in(
        "login",
        "--url",
        manager_url,
        "--username",
        "admin",
        "--password-stdin",
        input=ADMIN_PASSWORD + "x\n",
    )
    assert bad.code == 1
    _one_error_line(bad.err)
