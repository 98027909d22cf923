"""``nexus user passwd``: own password with the current one; sessions and tokens end."""

from __future__ import annotations

from pathlib import Path

import httpx

from nexus.client import Client

from .conftest import Runner


def _as(config_dir: Path, url: str, username: str, password: str) -> None:
    with Client.login(url, username, password) as c:
        access, refresh = c.token, c.refresh_token
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "config.toml"
    path.write_text(
        'current_context = "default"\n\n[contexts.default]\n'
        f'url = "{url}"\naccess_token = "{access}"\nrefresh_token = "{refresh}"\n'
        f'username = "{username}"\n'
    )
    path.chmod(0o600)


def test_user_passwd_needs_current_password_and_revokes_tokens(
    logged_in: Runner, nexus: Runner, manager_url: str, config_dir: Path
) -> None:
    assert logged_in("user", "create", "pia", "--password-stdin", input="pia-pass-1\n").code == 0
    _as(config_dir, manager_url, "pia", "pia-pass-1")
    with Client.login(manager_url, "pia", "pia-pass-1") as c:
        token = c.tokens.create("ci").token
    wrong = nexus("user", "passwd", "--password-stdin", input="not-it\nnew-pass-22\n")
    assert wrong.code != 0 and "current_password" in (wrong.err + wrong.out)
    ok = nexus("user", "passwd", "--password-stdin", input="pia-pass-1\nnew-pass-22\n")
    assert ok.code == 0, ok.err
    assert "revoked 1 API token" in ok.out + ok.err
    r = httpx.get(f"{manager_url}/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    with Client.login(manager_url, "pia", "new-pass-22"):
        pass
