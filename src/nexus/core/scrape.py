"""Who may read ``/metrics`` (manager and agent): a peer address in ``metrics_scrape_allow``
or a bearer ``metrics_scrape_token``. One rule for both services."""

from __future__ import annotations

import hmac
import ipaddress

from nexus.core.settings import Settings


def scrape_allowed(settings: Settings, peer: str | None, authorization: str | None) -> bool:
    """True when the caller presents the scrape token, or its address is on the allowlist."""
    token = settings.metrics_scrape_token
    if token and authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), token.encode()
        ):
            return True
    if not peer:
        return False
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(
        addr in ipaddress.ip_network(net, strict=False) for net in settings.metrics_scrape_allow
    )
