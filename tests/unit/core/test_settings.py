"""Settings: defaults < TOML < environment, one clear line per bad key or value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nexus.core.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("NEXUS_"):
            monkeypatch.delenv(k)


def test_precedence_defaults_file_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().port == 8080
    cfg = tmp_path / "n.toml"
    cfg.write_text('port = 9000\nhost = "0.0.0.0"\nrate_limit_auth = "5/minute"\n')
    s = load_settings(cfg)
    assert (s.port, s.host, s.rate_limit_auth) == (9000, "0.0.0.0", "5/minute")
    monkeypatch.setenv("NEXUS_PORT", "9100")
    s = load_settings(cfg)
    assert s.port == 9100 and s.host == "0.0.0.0"
    assert s.resolved_public_url() == "http://127.0.0.1:9100"
    assert load_settings(cfg, port=9200).port == 9200


def test_sqlite_is_the_default_database(tmp_path: Path) -> None:
    s = load_settings(state_dir=str(tmp_path))
    assert s.resolved_database_url() == f"sqlite+aiosqlite:///{tmp_path}/nexus.db"


def test_unknown_keys_and_bad_values_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'prot'"):
        load_settings(cfg)
    cfg.write_text("port = 99999\n")
    with pytest.raises(SettingsError, match=r"setting 'port'.*65535"):
        load_settings(cfg)
    cfg.write_text("port = [\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(cfg)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    monkeypatch.setenv("NEXUS_EMBEDED_AGENT", "1")
    with pytest.raises(SettingsError, match="NEXUS_EMBEDED_AGENT"):
        load_settings()


def test_serve_refuses_a_bad_config_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('log_level = "loud"\n')
    bin_dir = Path(sys.executable).parent
    r = subprocess.run(
        [str(bin_dir / "nexus-manager"), "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "log_level" in lines[0] and "Traceback" not in r.stderr
