"""TLS helpers shared by the manager and the agent: certificate pins, a pinned client
context, the check of a server's certificate files, and what counts as a loopback URL.

A *pin* is the SHA-256 (hex, lower case) of a certificate's DER encoding — what
``openssl x509 -noout -fingerprint -sha256 -in cert.pem`` prints, without the colons. The
manager pins each https agent to the certificate it registered with; the all-in-one
manager's embedded agent pins the manager's own certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import ssl
from pathlib import Path
from urllib.parse import urlsplit


class TlsConfigError(Exception):
    """A TLS setting that cannot work (one file without the other, unreadable, no match)."""


class CertificatePinError(ssl.SSLError):
    """The peer presented a certificate other than the pinned one."""


def cert_sha256(der: bytes) -> str:
    """The pin of a certificate: SHA-256 (hex) of its DER encoding."""
    return hashlib.sha256(der).hexdigest()


def leaf_sha256(cert_file: str | Path) -> str:
    """The pin of the first (leaf) certificate of a PEM file; raises :class:`TlsConfigError`."""
    try:
        pem = Path(cert_file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TlsConfigError(f"tls_cert_file {cert_file}: cannot read it ({exc})") from exc
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start)
    if start < 0 or stop < 0:
        raise TlsConfigError(f"tls_cert_file {cert_file}: no PEM certificate in it")
    try:
        der = ssl.PEM_cert_to_DER_cert(pem[start : stop + len(end)])
    except ValueError as exc:
        raise TlsConfigError(f"tls_cert_file {cert_file}: not a PEM certificate ({exc})") from exc
    return cert_sha256(der)


def pinned_ssl_context(expected_sha256: str, *, peer: str = "agent") -> ssl.SSLContext:
    """A client TLS context that accepts exactly one certificate: the one whose SHA-256 is
    ``expected_sha256``. The pin replaces CA and host-name checks (self-signed certificates,
    loopback addresses); it is checked inside the TLS handshake, so nothing — a token least
    of all — is sent to another peer. ``peer`` names the peer in the error."""
    expected = expected_sha256.lower()

    class _PinnedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()  # raises SSLWantReadError until the handshake is done
            der = self.getpeercert(binary_form=True)
            got = cert_sha256(der) if der else ""
            if not hmac.compare_digest(got, expected):
                raise CertificatePinError(
                    f"{peer} certificate sha256 {got or '(none)'} is not the pinned {expected}"
                )

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.sslobject_class = _PinnedSSLObject
    return ctx


def pin_error(exc: BaseException) -> CertificatePinError | None:
    """The :class:`CertificatePinError` behind ``exc`` (httpx wraps it twice), or None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, CertificatePinError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def server_tls_files(cert_file: str, key_file: str) -> tuple[str, str] | None:
    """``(cert, key)`` when TLS is configured, None when neither is set; raises
    :class:`TlsConfigError` (one line) when only one is set, a file is unreadable or the key
    does not belong to the certificate."""
    if not cert_file and not key_file:
        return None
    if not cert_file or not key_file:
        missing = "tls_cert_file" if not cert_file else "tls_key_file"
        raise TlsConfigError(
            f"{missing} is not set: HTTPS needs both tls_cert_file and tls_key_file"
        )
    for name, path in (("tls_cert_file", cert_file), ("tls_key_file", key_file)):
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise TlsConfigError(f"{name} {path}: cannot read it ({exc.strerror})") from exc
    leaf_sha256(cert_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"tls_key_file {key_file} is not the key of tls_cert_file {cert_file} "
            f"(or not a PEM key): {exc.reason or exc}"
        ) from exc
    return cert_file, key_file


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1`` (names are not
    resolved: only ``localhost`` is known to stay on the machine)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is a loopback address or ``localhost``."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return is_loopback_host(host)
