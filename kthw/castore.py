"""The CA store: the cluster's CAs, their files in the PKI folder and where a CA rotation stands.

It knows which CA signs, which ones are trusted and which ones were retired; it does not make
keys or certificates (kthw/pki.py issues them, kthw/rotation.py decides when a rotation moves
on). Its public API:

- :data:`CA_SUBJECTS` (and :data:`CA_NAME`, :data:`ETCD_CA_NAME`, :data:`FRONT_PROXY_CA_NAME`):
  the CAs, by file stem;
- :func:`ca_path`: the file of a CA, signing or one of a rotation;
- :func:`signing_ca`, :func:`save_ca`: the signing CA, checked on reading;
- :func:`rotation_step`, :func:`check_rotation`: where a rotation stands, its second CA checked;
- :func:`trust_bundle`, :func:`known_trust`: what hosts trust and what they may hold;
- :func:`add_next_ca`, :func:`promote_next`, :func:`retire_previous`: the rotation's three moves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

from cryptography import x509

from kthw.pkifiles import (
    PkiError,
    PrivateKey,
    cert_pem,
    fix_mode,
    key_pem,
    load_cert,
    load_key,
    same_public_key,
    write_private,
    write_public,
)

CA_NAME = "ca"
# etcd trusts only its own CA: a certificate from the cluster CA (every kubelet's, anything
# signed through an approved CSR) must not open the datastore under RBAC.
ETCD_CA_NAME = "etcd-ca"
# The aggregation layer's own CA: the apiserver proxies requests to aggregated APIs (metrics,
# custom apiservers) with a client certificate from it, and those servers believe the
# X-Remote-User headers only from a certificate of this CA. A separate CA, so no other
# certificate of the cluster can pose as the proxy.
FRONT_PROXY_CA_NAME = "front-proxy-ca"
CA_SUBJECTS = {CA_NAME: "KUBERNETES-CA", ETCD_CA_NAME: "ETCD-CA", FRONT_PROXY_CA_NAME: "FRONT-PROXY-CA"}
# A CA file on the hosts (ca.crt, etcd-ca.crt, front-proxy-ca.crt) is a trust bundle: the CA that
# signs, plus, during a rotation (kthw/rotation.py), the other one. Locally, <ca>.crt is always the
# signing CA alone; <ca>.next.crt is the new CA not signing yet (step "trust"), <ca>.previous.crt
# the old CA still trusted (step "switch"); retired-<time>/<ca>.crt are CAs a finished rotation
# dropped (a host still trusting one of them belongs to this cluster all the same).
NEXT, PREVIOUS, RETIRED = "next", "previous", "retired-"


def ca_path(pki_dir: Path, name: str, kind: str = "", ext: str = "crt") -> Path:
    """``<name>.crt`` (the signing CA), or ``<name>.<kind>.crt`` (kind: NEXT or PREVIOUS); ext "key" for its key."""
    return pki_dir / (f"{name}.{kind}.{ext}" if kind else f"{name}.{ext}")


# --------------------------------------------------------------------------- the signing CA


def signing_ca(pki_dir: Path, name: str, now: dt.datetime) -> tuple[x509.Certificate, PrivateKey] | None:
    """The CA that signs, checked; None while neither of its files exists (then make one and
    :func:`save_ca` it). The CA is never replaced silently: a half-present, mismatched or
    expired one is an error."""
    crt_path, key_path = ca_path(pki_dir, name), ca_path(pki_dir, name, ext="key")
    if not crt_path.exists() and not key_path.exists():
        return None
    start_over = (f"restore both files from your backup, or delete {pki_dir} entirely to start a new "
                  "CA (every node then needs the new certificates: rerun the deploy)")
    cert, key = load_cert(crt_path), load_key(key_path)
    if cert is None or key is None:
        missing = crt_path if cert is None else key_path
        raise PkiError(f"the CA is incomplete: {missing} is missing or unreadable. "
                       f"The CA is never replaced automatically. Fix: {start_over}.")
    if not same_public_key(key, cert):
        raise PkiError(f"{key_path} does not belong to {crt_path}. Fix: {start_over}.")
    if cert.not_valid_after_utc <= now:
        raise PkiError(f"the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}. Rotating a CA is a "
                       f"deliberate act. Fix: {start_over}.")
    fix_mode(key_path)
    return cert, key


def save_ca(pki_dir: Path, name: str, cert: x509.Certificate, key: PrivateKey) -> Path:
    """Write a new signing CA (key 0600 first, then the certificate); returns the certificate's path."""
    return _write_ca(pki_dir, name, "", cert, key)


def _write_ca(pki_dir: Path, name: str, kind: str, cert: x509.Certificate, key: PrivateKey) -> Path:
    write_private(ca_path(pki_dir, name, kind, "key"), key_pem(key))
    write_public(crt_path := ca_path(pki_dir, name, kind), cert_pem(cert))
    return crt_path


# --------------------------------------------------------------------------- rotation state


def rotation_step(pki_dir: Path) -> str:
    """Where a CA rotation stands: "none", "trust" (new CAs trusted, old ones still sign) or
    "switch" (new CAs sign, old ones still trusted)."""
    has = {kind: [n for n in CA_SUBJECTS if ca_path(pki_dir, n, kind).exists()] for kind in (NEXT, PREVIOUS)}
    if has[NEXT] and has[PREVIOUS]:
        raise PkiError(f"{pki_dir} holds both *.{NEXT}.crt and *.{PREVIOUS}.crt: a CA rotation is half-moved. "
                       "Fix: restore the folder from your backup (or finish the moves by hand, README: CA rotation).")
    for kind, names in has.items():
        if names and len(names) != len(CA_SUBJECTS):
            missing = sorted(set(CA_SUBJECTS) - set(names))
            raise PkiError(f"{pki_dir}: a CA rotation is under way but {', '.join(f'{n}.{kind}.crt' for n in missing)} "
                           "is missing. Fix: restore it from your backup (docs/pki.md: CA rotation).")
    return "trust" if has[NEXT] else "switch" if has[PREVIOUS] else "none"


def check_rotation(pki_dir: Path, now: dt.datetime) -> str:
    """:func:`rotation_step` (a half-moved rotation is an error), and the rotation's other CAs
    whole and valid, like the signing ones."""
    step = rotation_step(pki_dir)
    for name in CA_SUBJECTS:
        _check_other_ca(pki_dir, name, now)
    return step


def _other_ca(pki_dir: Path, name: str) -> Path | None:
    """The rotation's second CA of this kind (next or previous), if a rotation is under way."""
    for kind in (NEXT, PREVIOUS):
        if (path := ca_path(pki_dir, name, kind)).exists():
            return path
    return None


def _check_other_ca(pki_dir: Path, name: str, now: dt.datetime) -> None:
    if (crt_path := _other_ca(pki_dir, name)) is None:
        return
    key_path = crt_path.with_suffix(".key")
    cert, key = load_cert(crt_path), load_key(key_path)
    if cert is None or key is None or not same_public_key(key, cert):
        raise PkiError(f"{crt_path.name} and {key_path.name} in {pki_dir} are not a CA and its key. "
                       "Fix: restore both from your backup (docs/pki.md: CA rotation).")
    if cert.not_valid_after_utc <= now:
        raise PkiError(f"{crt_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}. Fix: finish the rotation "
                       "or restore the folder from your backup (docs/pki.md: CA rotation).")


# --------------------------------------------------------------------------- what hosts trust


def trust_bundle(pki_dir: Path, name: str = CA_NAME) -> bytes:
    """What hosts and kubeconfigs trust for this CA: the signing CA alone, or during a rotation
    both CAs, oldest first (so the bundle stays the same bytes from step "trust" to "switch")."""
    pems = [ca_path(pki_dir, name).read_bytes()]
    if other := _other_ca(pki_dir, name):
        pems.append(other.read_bytes())
    certs = sorted(((x509.load_pem_x509_certificate(p), p) for p in pems),
                   key=lambda cp: (cp[0].not_valid_before_utc, cp[0].serial_number))
    return b"".join(p for _, p in certs)


def known_trust(pki_dir: Path, name: str = CA_NAME) -> set[str]:
    """sha256 of every CA file a host of this cluster may hold: any one or two of the signing CA,
    the rotation's other CA and the CAs earlier rotations retired, in either order."""
    pems = [ca_path(pki_dir, name).read_bytes()]
    if other := _other_ca(pki_dir, name):
        pems.append(other.read_bytes())
    pems += [p.read_bytes() for p in sorted(pki_dir.glob(f"{RETIRED}*/{name}.crt"))]
    combos = [*pems, *(a + b for a in pems for b in pems if a != b)]
    return {hashlib.sha256(c).hexdigest() for c in combos}


# --------------------------------------------------------------------------- the rotation's moves


def add_next_ca(pki_dir: Path, name: str, cert: x509.Certificate, key: PrivateKey) -> Path:
    """Step "trust": the new CA beside the signing one (``<name>.next.crt``/``.key``); returns its path."""
    return _write_ca(pki_dir, name, NEXT, cert, key)


def promote_next(pki_dir: Path) -> list[Path]:
    """Step "switch": the next CAs sign from now on; the signing ones become ``<name>.previous``.
    Returns the signing CAs' paths."""
    for name in CA_SUBJECTS:
        for ext in ("crt", "key"):
            os.replace(ca_path(pki_dir, name, ext=ext), ca_path(pki_dir, name, PREVIOUS, ext))
            os.replace(ca_path(pki_dir, name, NEXT, ext), ca_path(pki_dir, name, ext=ext))
    return [ca_path(pki_dir, name) for name in CA_SUBJECTS]


def retire_previous(pki_dir: Path, now: dt.datetime) -> list[Path]:
    """Rotation done: the previous CAs go to ``retired-<time>/<name>.crt``/``.key``. Returns the
    retired certificates' paths."""
    retired = pki_dir / f"{RETIRED}{now:%Y%m%dT%H%M%SZ}"
    retired.mkdir(mode=0o700)
    for name in CA_SUBJECTS:
        for ext in ("crt", "key"):
            os.replace(ca_path(pki_dir, name, PREVIOUS, ext), retired / f"{name}.{ext}")
    return [retired / f"{name}.crt" for name in CA_SUBJECTS]
