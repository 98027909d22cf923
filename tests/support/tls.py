"""Certificates made in the test (trustme): files for servers, fingerprints computed
independently of ``nexus.core.tls``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


@dataclass
class CertFiles:
    """A server certificate (chain, leaf first) and its key as PEM files, and the leaf's pin."""

    cert: Path
    key: Path
    sha256: str


def issue(ca: trustme.CA, directory: Path, name: str, *hosts: str) -> CertFiles:
    """A certificate for ``hosts`` signed by ``ca``, written to ``directory``."""
    leaf = ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")))
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)
    return CertFiles(cert, key, hashlib.sha256(der).hexdigest())


def ca_file(ca: trustme.CA, directory: Path, name: str = "ca") -> Path:
    """The CA's certificate as a PEM file (a ``tls_ca_file``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
