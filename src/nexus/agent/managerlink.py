"""The agent's side of the link to the manager: the one place that decides how the agent
trusts the manager (registration, heartbeats, image downloads all go through
:func:`manager_client` or :func:`manager_verify`).

* ``https://`` managers are verified: against ``manager_cert_sha256`` when set (a pin:
  exactly that certificate; the embedded agent pins the manager's own ``tls_cert_file``),
  else against ``tls_ca_file``, else against the system CAs.
* ``http://`` is allowed on loopback (127.0.0.0/8, ``::1``, ``localhost``) only, unless the
  ``insecure`` setting (``nexus-agent --insecure``) says otherwise: the host token and image
  files would cross the network in clear.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import httpx

from nexus.core.settings import Settings
from nexus.core.tls import is_loopback_url, pinned_ssl_context


class ManagerUrlError(Exception):
    """A manager URL the agent must not use (plain http off loopback, not http(s))."""


def check_manager_url(url: str, *, insecure: bool) -> None:
    """Refuse a manager URL that is not http(s), or plain http to a non-loopback address
    without ``insecure``; the message is one line naming the fix."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise ManagerUrlError(f"manager URL {url!r} is not a URL ({exc})") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise ManagerUrlError(f"manager URL {url!r} must be https://HOST[:PORT] (or http://)")
    if parts.scheme == "http" and not insecure and not is_loopback_url(url):
        raise ManagerUrlError(
            f"refusing plain-http manager {url}: the host token would cross the network in "
            "clear; use https:// (set tls_cert_file on the manager) or pass --insecure "
            "(NEXUS_INSECURE=true) to accept it"
        )


def manager_verify(settings: Settings, url: str) -> ssl.SSLContext | bool:
    """The ``verify`` for httpx calls to the manager at ``url``: a pinned context
    (``manager_cert_sha256``), a context trusting ``tls_ca_file``, or the system CAs."""
    if not url.startswith("https://"):
        return True  # unused for http; check_manager_url decides whether http is allowed
    if settings.manager_cert_sha256:
        return pinned_ssl_context(settings.manager_cert_sha256, peer="manager")
    if settings.tls_ca_file:
        return ssl.create_default_context(cafile=settings.tls_ca_file)
    return ssl.create_default_context()


def manager_client(settings: Settings, url: str, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for the manager at ``url`` (``base_url``) with :func:`manager_verify`."""
    return httpx.AsyncClient(
        base_url=url.rstrip("/"), verify=manager_verify(settings, url), **kwargs
    )
