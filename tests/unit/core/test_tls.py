"""nexus.core.tls and the TLS settings (issue 12): pins, server certificate files, loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from nexus.core.settings import Settings, SettingsError, load_settings
from nexus.core.tls import (
    TlsConfigError,
    is_loopback_url,
    leaf_sha256,
    server_tls_files,
)
from tests.support.tls import issue


def test_the_pin_is_the_leaf_of_a_chain(tmp_path: Path) -> None:
    intermediate = trustme.CA().create_child_ca()
    cert = issue(intermediate, tmp_path, "chain")
    assert cert.cert.read_text().count("BEGIN CERTIFICATE") == 2
    assert leaf_sha256(cert.cert) == cert.sha256


def test_server_files_are_checked_in_one_line(tmp_path: Path) -> None:
    ca = trustme.CA()
    a, b = issue(ca, tmp_path, "a"), issue(ca, tmp_path, "b")
    assert server_tls_files("", "") is None
    assert server_tls_files(str(a.cert), str(a.key)) == (str(a.cert), str(a.key))
    for cert, key, msg in [
        (str(a.cert), "", "tls_key_file is not set"),
        ("", str(a.key), "tls_cert_file is not set"),
        (str(tmp_path / "none"), str(a.key), "cannot read"),
        (str(a.key), str(a.key), "no PEM certificate"),
        (str(a.cert), str(b.key), "is not the key of"),
    ]:
        with pytest.raises(TlsConfigError, match=msg) as err:
            server_tls_files(cert, key)
        assert "\n" not in str(err.value)


def test_public_url_says_https_when_tls_is_on() -> None:
    assert Settings(port=9000).resolved_public_url() == "http://127.0.0.1:9000"
    tls = Settings(host="0.0.0.0", port=9000, tls_cert_file="c.pem", tls_key_file="k.pem")
    assert tls.resolved_public_url() == "https://127.0.0.1:9000"
    assert Settings(host="::1", port=9000).resolved_public_url() == "http://[::1]:9000"


def test_manager_pin_setting_is_normalised_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pin = "AB:" * 31 + "CD"
    assert Settings(manager_cert_sha256=pin).manager_cert_sha256 == "ab" * 31 + "cd"
    monkeypatch.setenv("NEXUS_MANAGER_CERT_SHA256", "not-a-pin")
    with pytest.raises(SettingsError, match="manager_cert_sha256"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.1.2.3", True),
        ("http://[::1]:80", True),
        ("http://localhost:8080", True),
        ("http://LOCALHOST.:8080", True),
        ("http://10.0.0.1:8080", False),
        ("http://localhost.evil.example", False),
        ("http://[::ffff:10.0.0.1]", False),
        ("http://manager", False),
        ("not a url", False),
    ],
)
def test_loopback_urls(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback
