"""The CLI's finish (issue 20), against a real manager: names or ids everywhere, confirmations,
the login that never reads a secret as the URL, names in tables, vm list columns."""

from __future__ import annotations

import json

from tests.cli.conftest import Runner


def test_login_without_url_never_reads_the_password_as_the_url(nexus: Runner) -> None:
    r = nexus("--context", "new", "login", "--username", "u", "--password-stdin", input="pw\n")
    assert r.code == 1
    assert "has no manager URL: give --url" in r.err
    assert "pw" not in r.err.replace("password", "")
    r = nexus("--context", "new", "login", "--token-stdin", input="nxs_abc\n")
    assert r.code == 1 and "give --url" in r.err


def test_token_delete_by_name(logged_in: Runner) -> None:
    created = json.loads(logged_in("auth", "token", "create", "cli-finish", "-o", "json").out)
    r = logged_in("auth", "token", "delete", "cli-finish", "--yes")
    assert r.code == 0, r.err
    assert created["id"] in r.err  # the confirmation names what was revoked
    tokens = json.loads(logged_in("auth", "token", "list", "-o", "json").out)
    gone = next(t for t in tokens if t["id"] == created["id"])
    assert gone["revoked_at"] is not None
    r = logged_in("auth", "token", "delete", "no-such-token", "--yes")
    assert r.code == 1 and "not found" in r.err and "(see: nexus auth token list)" in r.err


def test_vm_list_has_name_columns(logged_in: Runner) -> None:
    r = logged_in("vm", "list")
    assert r.code == 0, r.err
    header = r.out.splitlines()[0].split() if r.out.strip() else []
    if header:
        assert {"IMAGE", "HOST", "IP"} <= set(header)


def test_audit_list_shows_resource_names(logged_in: Runner) -> None:
    logged_in("network", "create", "audit-named", "-o", "json")
    r = logged_in("audit", "list", "--action", "network.create", "-o", "json")
    rows = json.loads(r.out)
    assert any(row.get("resource_name") == "audit-named" for row in rows)
    table = logged_in("audit", "list", "--action", "network.create").out
    assert "NAME" in table.splitlines()[0] and "audit-named" in table
    assert logged_in("network", "delete", "audit-named", "--yes").code == 0


def test_unknown_name_hints_at_the_list_command(logged_in: Runner) -> None:
    r = logged_in("vm", "get", "no-such-vm")
    assert r.code == 1
    assert "VM 'no-such-vm' not found (see: nexus vm list)" in r.err
