"""The PKI folder's files on the operator machine, below everything else of the PKI.

Written atomically and with their mode from the start (keys and other secrets 0600, never
world-readable even for a moment; certificates 0644); read back as None when absent or
unreadable, so the caller decides what that means. :class:`PkiError` is the one error of the
PKI (kthw/pki.py, kthw/castore.py, kthw/cluster_secrets.py, kthw/rotation.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class PkiError(Exception):
    """The PKI directory is in a state we must not repair on our own (e.g. a broken CA)."""


def write_private(path: Path, data: bytes) -> None:
    """Atomically write a secret: created 0600 from the start, never world-readable."""
    _atomic_write(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    _atomic_write(path, data, 0o644)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fix_mode(path: Path) -> None:
    """Keys that someone loosened are tightened again; contents stay untouched."""
    if path.exists() and (path.stat().st_mode & 0o777) != 0o600:
        os.chmod(path, 0o600)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(path: Path) -> PrivateKey | None:
    try:
        # Skipping the RSA consistency check halves rerun time; these are our own files and the
        # key is compared with its certificate's public key before it is trusted.
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else None


def load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)
