"""The wire side of webhooks: Standard Webhooks signatures, SSRF checks, one HTTP attempt.

Signatures follow https://www.standardwebhooks.com: the headers ``webhook-id``,
``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` = ``v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`` keyed with the base64 part of the ``whsec_`` secret.

Targets: a webhook may not reach loopback, link-local, private, shared, reserved, multicast or
unspecified addresses, nor this manager's own addresses, unless the administrator's
``webhook_allowlist`` admits them. The check runs when the webhook is saved and again before
every attempt, and the attempt connects to the address that was checked (the host name is
not resolved a second time), so DNS rebinding cannot slip past it. Redirects are not
followed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from nexus.core.logging import get_logger

log = get_logger(__name__)

SECRET_PREFIX = "whsec_"
USER_AGENT = "nexus-webhooks/1"
RESPONSE_EXCERPT = 1024
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """The URL may not be used as a webhook target; the message says why."""


def new_secret() -> str:
    """A new signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def check_secret(secret: str) -> str:
    """A caller-chosen secret must be ``whsec_`` + base64 of 24 to 64 bytes."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        raise ValueError("secret: 'whsec_' followed by base64 expected") from None
    if not secret.startswith(SECRET_PREFIX) or not 24 <= len(key) <= 64:
        raise ValueError("secret: 'whsec_' followed by the base64 of 24 to 64 random bytes")
    return secret


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def encode(body: dict[str, Any]) -> bytes:
    """The bytes sent (and signed) for a delivery body."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


# --- targets -------------------------------------------------------------------------------


def check_url(url: str) -> tuple[str, int]:
    """Static checks of a target URL; its host and port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"url: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("url: only http:// and https:// targets")
    if not parts.hostname:
        raise TargetRefused("url: a host name or address is required")
    if parts.username or parts.password:
        raise TargetRefused("url: credentials in the URL are not allowed (use the signature)")
    if parts.fragment:
        raise TargetRefused("url: a fragment (#...) means nothing to a server")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _allowed(ip: IPAddress, host: str, allowlist: list[str]) -> bool:
    for entry in allowlist:
        if entry.lower() == host.lower():
            return True
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


_OWN: tuple[float, frozenset[IPAddress]] = (0.0, frozenset())


def own_addresses() -> frozenset[IPAddress]:
    """This machine's addresses (cached for a minute)."""
    global _OWN
    if time.monotonic() - _OWN[0] < 60:
        return _OWN[1]
    found: set[IPAddress] = set()
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for msg in ipr.get_addr():
                addr = msg.get_attr("IFA_ADDRESS")
                if addr:
                    found.add(ipaddress.ip_address(addr.split("%")[0]))
    except Exception as exc:  # no netlink here: the private/loopback rules still hold
        log.warning("webhooks.own_addresses_unknown", error=str(exc))
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
    except OSError:
        pass
    _OWN = (time.monotonic(), frozenset(found))
    return _OWN[1]


def refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be a target (None: it may)."""
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "the unspecified address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return refusal(ip.ipv4_mapped)
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "a private or reserved address"
    if ip in own_addresses():
        return "an address of the manager itself"
    return None


async def resolve(url: str, allowlist: list[str]) -> tuple[str, int, list[IPAddress]]:
    """Check a target and resolve it: host, port and the addresses that may be used. Every
    address the name resolves to must pass (one bad answer refuses the target)."""
    host, port = check_url(url)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addrs = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise TargetRefused(f"url: cannot resolve {host!r} ({exc.strerror})") from None
        addrs = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if ip not in addrs:
                addrs.append(ip)
    for ip in addrs:
        why = refusal(ip)
        if why is not None and not _allowed(ip, host, allowlist):
            raise TargetRefused(
                f"url: {host} resolves to {ip}, {why}; webhooks may only reach public"
                " addresses unless an administrator adds it to `webhook_allowlist`"
            )
    return host, port, addrs


# --- one attempt -----------------------------------------------------------------------------


@dataclass
class Attempt:
    """What one delivery attempt gave."""

    ok: bool
    status_code: int | None
    latency_ms: float
    response: str | None
    error: str | None


async def send(
    client: httpx.AsyncClient,
    *,
    url: str,
    secret: str,
    msg_id: str,
    body: dict[str, Any],
    allowlist: list[str],
    timeout_s: float,
) -> Attempt:
    """POST ``body`` to ``url``, signed, connecting to an address checked just now."""
    start = time.monotonic()

    def took() -> float:
        return round((time.monotonic() - start) * 1000, 1)

    try:
        host, _port, addrs = await resolve(url, allowlist)
    except TargetRefused as exc:
        return Attempt(False, None, took(), None, f"refused: {exc}")
    payload = encode(body)
    ts = int(time.time())
    target = httpx.URL(url)
    pinned = target.copy_with(host=str(addrs[0]))
    headers = {
        "host": target.netloc.decode(),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, payload),
    }
    extensions = {"sni_hostname": host} if target.scheme == "https" else {}
    try:
        async with client.stream(
            "POST",
            pinned,
            content=payload,
            headers=headers,
            timeout=timeout_s,
            extensions=extensions,
        ) as resp:
            chunks = b""
            async for chunk in resp.aiter_bytes():
                chunks += chunk
                if len(chunks) >= RESPONSE_EXCERPT:
                    break
            excerpt = chunks[:RESPONSE_EXCERPT].decode(errors="replace")
            ok = 200 <= resp.status_code < 300
            return Attempt(
                ok,
                resp.status_code,
                took(),
                excerpt,
                None if ok else f"the receiver answered {resp.status_code}",
            )
    except httpx.TimeoutException:
        return Attempt(False, None, took(), None, f"timed out after {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return Attempt(False, None, took(), None, f"{type(exc).__name__}: {exc}"[:500])
