"""The wire side of webhooks: signatures, secrets, and which targets are refused."""

from __future__ import annotations

import ipaddress
import time

import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from nexus.manager.features.webhooks import delivery as wire


def test_signature_verifies_with_an_independent_implementation() -> None:
    secret = wire.new_secret()
    body = wire.encode({"type": "vm.started", "data": {"id": 1, "name": "é"}})
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": wire.sign(secret, "msg_1", ts, body),
    }
    verifier = Verifier(secret)
    assert verifier.verify(body, headers)["type"] == "vm.started"
    headers["webhook-signature"] = wire.sign(wire.new_secret(), "msg_1", ts, body)
    with pytest.raises(Exception, match="signature"):
        verifier.verify(body, headers)


def test_secrets_must_be_whsec_base64_of_enough_bytes() -> None:
    assert wire.check_secret(wire.new_secret()).startswith("whsec_")
    for bad in ("nope", "whsec_", "whsec_!!!!", "whsec_" + "QUJD"):
        with pytest.raises(ValueError):
            wire.check_secret(bad)


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # shared (carrier-grade NAT)
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:10.0.0.1", "private"),
        ("203.0.113.5", "private"),  # documentation range: not global
    ],
)
def test_internal_addresses_are_refused(addr: str, why: str) -> None:
    reason = wire.refusal(ipaddress.ip_address(addr))
    assert reason is not None and why in reason


def test_public_addresses_pass_unless_they_are_the_managers_own() -> None:
    ip = ipaddress.ip_address("93.184.216.34")
    assert wire.refusal(ip) is None
    assert "manager itself" in (wire.refusal(ip, frozenset({ip})) or "")


async def test_the_allowlist_admits_by_network_or_name() -> None:
    with pytest.raises(wire.TargetRefused, match="webhook_allowlist"):
        await wire.resolve("http://127.0.0.1:8000/x", [])
    assert (await wire.resolve("http://127.0.0.1:8000/x", ["127.0.0.0/8"]))[2]
    assert (await wire.resolve("http://localhost:8000/x", ["localhost"]))[2]
    for url in ("ftp://x.example/", "http://u:p@x.example/", "http:///nohost", "http://x/#f"):
        with pytest.raises(wire.TargetRefused):
            wire.check_url(url)
