"""The cluster's PKI, generated on the operator machine with ``cryptography``.

One CA signs every certificate. :func:`cert_specs` says what each certificate must be
(subject, SANs, usages); :func:`ensure_pki` makes the files on disk agree with it:

- a missing certificate is issued; a present one is kept byte for byte while it still
  matches its spec, was signed by the CA, pairs with its key and is not about to expire;
- otherwise it is re-issued (its key is kept unless the key itself is the problem);
- the CA is never replaced silently: a half-present or broken CA is an error.

Private keys are written 0600 and never printed::

    >>> report = ensure_pki(load_cluster())
    >>> report["kube-apiserver"]
    'kept'
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kthw.model import Cluster

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
# The proxy's name, as the apiserver's --requestheader-allowed-names lists it.
FRONT_PROXY_CLIENT = "front-proxy-client"
SERVICE_ACCOUNT = "service-account"
ENCRYPTION_CONFIG = "encryption-config.yaml"
# Weave Net's mesh password (cni: weave): encrypts and authenticates traffic between peers.
WEAVE_PASSWORD = "weave-password"
# The cluster's identity: a host holding other versions of these belongs to another cluster (or
# this one was re-created locally). Replacing them would break every Secret, token and
# kubeconfig, so the deploy refuses unless told to (README: "Cluster identity").
IDENTITY_FILES = (f"{CA_NAME}.crt", f"{ETCD_CA_NAME}.crt", f"{FRONT_PROXY_CA_NAME}.crt", f"{SERVICE_ACCOUNT}.pub",
                  ENCRYPTION_CONFIG)
# A CA file on the hosts (ca.crt, etcd-ca.crt, front-proxy-ca.crt) is a trust bundle: the CA that
# signs, plus, during a rotation (kthw/rotation.py), the other one. Locally, <ca>.crt is always the
# signing CA alone; <ca>.next.crt is the new CA not signing yet (step "trust"), <ca>.previous.crt
# the old CA still trusted (step "switch"); retired-<time>/<ca>.crt are CAs a finished rotation
# dropped (a host still trusting one of them belongs to this cluster all the same).
NEXT, PREVIOUS, RETIRED = "next", "previous", "retired-"
# Backdate certificates a little so a node whose clock lags the operator's accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class PkiError(Exception):
    """The PKI directory is in a state we must not repair on our own (e.g. a broken CA)."""


@dataclass(frozen=True)
class CertSpec:
    """What one certificate must say. Files: ``<pki dir>/<name>.crt`` and ``.key``."""

    name: str
    common_name: str
    organizations: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[IPv4Address, ...] = ()
    server: bool = False  # extendedKeyUsage serverAuth
    client: bool = False  # extendedKeyUsage clientAuth
    purpose: str = ""
    issuer: str = CA_NAME  # which CA signs it

    @property
    def eku(self) -> frozenset:
        out = set()
        if self.server:
            out.add(ExtendedKeyUsageOID.SERVER_AUTH)
        if self.client:
            out.add(ExtendedKeyUsageOID.CLIENT_AUTH)
        return frozenset(out)


def kubelet_cert_name(node_name: str) -> str:
    return f"kubelet-{node_name}"


# The CN every etcd member's certificate carries; etcd's --peer-cert-allowed-cn admits only it
# at the peer port (the apiserver's etcd client certificate, from the same CA, is refused there).
ETCD_MEMBER_CN = "etcd-server"


def etcd_member_cert_name(node_name: str) -> str:
    return f"etcd-server-{node_name}"


def cert_specs(cluster: Cluster) -> list[CertSpec]:
    """Every leaf certificate of the cluster, derived from the model."""
    masters_ips = tuple(m.ip for m in cluster.masters)
    loopback = IPv4Address("127.0.0.1")
    specs = [
        CertSpec("admin", "admin", ("system:masters",), client=True,
                 purpose="the operator's kubectl (full access through system:masters)"),
        CertSpec("kube-controller-manager", "system:kube-controller-manager", client=True,
                 purpose="kube-controller-manager's identity at the apiserver"),
        CertSpec("kube-scheduler", "system:kube-scheduler", client=True,
                 purpose="kube-scheduler's identity at the apiserver"),
        CertSpec("kube-proxy", "system:kube-proxy", ("system:node-proxier",), client=True,
                 purpose="kube-proxy's identity at the apiserver"),
        CertSpec(
            "kube-apiserver", "kube-apiserver",
            dns_names=(
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster",
                f"kubernetes.default.svc.{cluster.domain}",
            ),
            ip_addresses=(cluster.api_service_ip, *masters_ips, cluster.loadbalancer.ip, loopback),
            server=True,
            purpose="apiserver serving certificate, valid for every way clients reach it",
        ),
        # Bound to ClusterRole system:kubelet-api-admin by RBAC, not to system:masters:
        # the apiserver needs kubelet logs/exec, not cluster-admin.
        CertSpec("apiserver-kubelet-client", "kube-apiserver-kubelet-client", client=True,
                 purpose="apiserver's client certificate at kubelets (logs, exec, port-forward)"),
        CertSpec("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True,
                 purpose="apiserver's client certificate at etcd", issuer=ETCD_CA_NAME),
        CertSpec(FRONT_PROXY_CLIENT, FRONT_PROXY_CLIENT, client=True, issuer=FRONT_PROXY_CA_NAME,
                 purpose="apiserver's client certificate at aggregated API servers (aggregation layer)"),
    ]
    for m in cluster.masters:
        specs.append(CertSpec(
            etcd_member_cert_name(m.name), ETCD_MEMBER_CN, dns_names=(m.name,), ip_addresses=(m.ip, loopback),
            server=True, client=True, issuer=ETCD_CA_NAME,
            purpose=f"etcd member {m.name}: serving and peer certificate (peers are clients of each other)",
        ))
    for w in cluster.kubelet_nodes:
        specs.append(CertSpec(
            kubelet_cert_name(w.name), f"system:node:{w.name}", ("system:nodes",),
            dns_names=(w.name,), ip_addresses=(w.ip,), server=True, client=True,
            purpose=f"{w.name}'s kubelet: its identity at the apiserver and its serving certificate",
        ))
    return specs


# --------------------------------------------------------------------------- files


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


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    bits = int(key_type.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _key_matches_type(key: PrivateKey, key_type: str) -> bool:
    if key_type == "ecdsa-p256":
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    return isinstance(key, rsa.RSAPrivateKey) and key.key_size == int(key_type.split("-")[1])


def _load_key(path: Path) -> PrivateKey | None:
    try:
        # Skipping the RSA consistency check halves rerun time; these are our own files and the
        # key is compared with its certificate's public key before it is trusted.
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else None


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


# --------------------------------------------------------------------------- building certs


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _ca_subject(cluster: Cluster, name: str = CA_NAME) -> x509.Name:
    return _name(CA_SUBJECTS[name], (cluster.name,))


def _key_usage(key: PrivateKey, *, ca: bool) -> x509.KeyUsage:
    # keyEncipherment only means something for RSA key transport.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey) and not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _issue_ca(cluster: Cluster, key: PrivateKey, now: dt.datetime, name: str = CA_NAME) -> x509.Certificate:
    subject = _ca_subject(cluster, name)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=cluster.pki.ca_validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue_leaf(spec: CertSpec, key: PrivateKey, ca_cert: x509.Certificate, ca_key: PrivateKey,
                validity_days: int, now: dt.datetime) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(spec.common_name, spec.organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=validity_days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(key, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(sorted(spec.eku, key=lambda o: o.dotted_string)),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    sans = [x509.DNSName(d) for d in spec.dns_names] + [x509.IPAddress(i) for i in spec.ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


# --------------------------------------------------------------------------- checking certs


def cert_sans(cert: x509.Certificate) -> tuple[set[str], set[IPv4Address]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(ext.get_values_for_type(x509.DNSName)), {
        ip_address(i) for i in ext.get_values_for_type(x509.IPAddress)
    }


def cert_eku(cert: x509.Certificate) -> frozenset:
    try:
        return frozenset(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return frozenset()


def _why_reissue(spec: CertSpec, cert: x509.Certificate, ca_cert: x509.Certificate,
                 renew_before: dt.timedelta, now: dt.datetime) -> str | None:
    """None when the certificate is still right; otherwise the reason, for the report."""
    if cert.subject != _name(spec.common_name, spec.organizations):
        return f"subject changed ({cert.subject.rfc4514_string()})"
    if cert.issuer != ca_cert.subject:
        return "issued by another CA"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return "signature does not verify against the CA"
    dns, ips = cert_sans(cert)
    if dns != set(spec.dns_names) or ips != set(spec.ip_addresses):
        return "SANs changed"
    if cert_eku(cert) != spec.eku:
        return "key usages changed"
    if cert.not_valid_after_utc - now < renew_before:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}, within the renewal window"
    if cert.not_valid_before_utc > now + CLOCK_SKEW:
        return "not valid yet"
    return None


# --------------------------------------------------------------------------- the whole PKI


@dataclass
class PkiReport:
    """What :func:`ensure_pki` did, per file stem: created, kept, or 're-issued: why'."""

    actions: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        return self.actions[name]

    @property
    def changed(self) -> list[str]:
        return [n for n, a in self.actions.items() if a != "kept"]



def _ensure_ca(cluster: Cluster, pki_dir: Path, now: dt.datetime, report: PkiReport, name: str = CA_NAME
               ) -> tuple[x509.Certificate, PrivateKey]:
    crt_path, key_path = pki_dir / f"{name}.crt", pki_dir / f"{name}.key"
    start_over = (f"restore both files from your backup, or delete {pki_dir} entirely to start a new "
                  "CA (every node then needs the new certificates: rerun the deploy)")
    if not crt_path.exists() and not key_path.exists():
        key = _new_key(cluster.pki.key_type)
        cert = _issue_ca(cluster, key, now, name)
        write_private(key_path, _key_pem(key))
        write_public(crt_path, cert.public_bytes(serialization.Encoding.PEM))
        report.actions[name] = "created"
        return cert, key
    cert, key = _load_cert(crt_path), _load_key(key_path)
    if cert is None or key is None:
        missing = crt_path if cert is None else key_path
        raise PkiError(f"the CA is incomplete: {missing} is missing or unreadable. "
                       f"The CA is never replaced automatically. Fix: {start_over}.")
    if not _same_public_key(key, cert):
        raise PkiError(f"{key_path} does not belong to {crt_path}. Fix: {start_over}.")
    if cert.not_valid_after_utc <= now:
        raise PkiError(f"the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}. Rotating a CA is a "
                       f"deliberate act. Fix: {start_over}.")
    _fix_mode(key_path)
    report.actions[name] = "kept"
    return cert, key


def rotation_step(pki_dir: Path) -> str:
    """Where a CA rotation stands: "none", "trust" (new CAs trusted, old ones still sign) or
    "switch" (new CAs sign, old ones still trusted)."""
    has = {kind: [n for n in CA_SUBJECTS if (pki_dir / f"{n}.{kind}.crt").exists()] for kind in (NEXT, PREVIOUS)}
    if has[NEXT] and has[PREVIOUS]:
        raise PkiError(f"{pki_dir} holds both *.{NEXT}.crt and *.{PREVIOUS}.crt: a CA rotation is half-moved. "
                       "Fix: restore the folder from your backup (or finish the moves by hand, README: CA rotation).")
    for kind, names in has.items():
        if names and len(names) != len(CA_SUBJECTS):
            missing = sorted(set(CA_SUBJECTS) - set(names))
            raise PkiError(f"{pki_dir}: a CA rotation is under way but {', '.join(f'{n}.{kind}.crt' for n in missing)} "
                           "is missing. Fix: restore it from your backup (README: CA rotation).")
    return "trust" if has[NEXT] else "switch" if has[PREVIOUS] else "none"


def _other_ca(pki_dir: Path, name: str) -> Path | None:
    """The rotation's second CA of this kind (next or previous), if a rotation is under way."""
    for kind in (NEXT, PREVIOUS):
        if (path := pki_dir / f"{name}.{kind}.crt").exists():
            return path
    return None


def trust_bundle(pki_dir: Path, name: str = CA_NAME) -> bytes:
    """What hosts and kubeconfigs trust for this CA: the signing CA alone, or during a rotation
    both CAs, oldest first (so the bundle stays the same bytes from step "trust" to "switch")."""
    pems = [(pki_dir / f"{name}.crt").read_bytes()]
    if other := _other_ca(pki_dir, name):
        pems.append(other.read_bytes())
    certs = sorted(((x509.load_pem_x509_certificate(p), p) for p in pems),
                   key=lambda cp: (cp[0].not_valid_before_utc, cp[0].serial_number))
    return b"".join(p for _, p in certs)


def known_trust(pki_dir: Path, name: str = CA_NAME) -> set[str]:
    """sha256 of every CA file a host of this cluster may hold: any one or two of the signing CA,
    the rotation's other CA and the CAs earlier rotations retired, in either order."""
    pems = [(pki_dir / f"{name}.crt").read_bytes()]
    if other := _other_ca(pki_dir, name):
        pems.append(other.read_bytes())
    pems += [p.read_bytes() for p in sorted(pki_dir.glob(f"{RETIRED}*/{name}.crt"))]
    combos = [*pems, *(a + b for a in pems for b in pems if a != b)]
    return {hashlib.sha256(c).hexdigest() for c in combos}


def _check_rotation_ca(pki_dir: Path, name: str, now: dt.datetime) -> None:
    """The rotation's other CA must be whole and valid, like the signing one."""
    if (crt_path := _other_ca(pki_dir, name)) is None:
        return
    key_path = crt_path.with_suffix(".key")
    cert, key = _load_cert(crt_path), _load_key(key_path)
    if cert is None or key is None or not _same_public_key(key, cert):
        raise PkiError(f"{crt_path.name} and {key_path.name} in {pki_dir} are not a CA and its key. "
                       "Fix: restore both from your backup (README: CA rotation).")
    if cert.not_valid_after_utc <= now:
        raise PkiError(f"{crt_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}. Fix: finish the rotation "
                       "or restore the folder from your backup (README: CA rotation).")


def ensure_pki(cluster: Cluster, pki_dir: Path | None = None, now: dt.datetime | None = None
               ) -> PkiReport:
    """Make ``pki_dir`` hold a correct CA, every leaf, the service-account key pair and the
    encryption config. Only what is missing or wrong is (re)written."""
    pki_dir = Path(pki_dir or cluster.pki_dir)
    now = now or dt.datetime.now(dt.UTC)
    pki_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(pki_dir, 0o700)
    report = PkiReport()
    cas = {name: _ensure_ca(cluster, pki_dir, now, report, name) for name in CA_SUBJECTS}
    rotation_step(pki_dir)  # a half-moved rotation is an error
    for name in CA_SUBJECTS:
        _check_rotation_ca(pki_dir, name, now)
    renew_before = dt.timedelta(days=cluster.pki.renew_before_days)
    key_type = cluster.pki.key_type

    # Decide first, then generate all new keys in parallel (RSA generation dominates the cost
    # and releases the GIL).
    plan: list[tuple[CertSpec, PrivateKey | None, str]] = []
    for spec in cert_specs(cluster):
        crt_path, key_path = pki_dir / f"{spec.name}.crt", pki_dir / f"{spec.name}.key"
        cert, key = _load_cert(crt_path), _load_key(key_path)
        if key is not None and not _key_matches_type(key, key_type):
            plan.append((spec, None, f"re-issued: key type is now {key_type}"))
        elif cert is None and key is None:
            plan.append((spec, None, "created"))
        elif key is None:
            plan.append((spec, None, "re-issued: key missing or unreadable"))
        elif cert is None:
            plan.append((spec, key, "re-issued: certificate missing or unreadable"))
        elif not _same_public_key(key, cert):
            plan.append((spec, None, "re-issued: key does not match certificate"))
        elif reason := _why_reissue(spec, cert, cas[spec.issuer][0], renew_before, now):
            plan.append((spec, key, f"re-issued: {reason}"))
        else:
            _fix_mode(key_path)
            report.actions[spec.name] = "kept"
    sa_key = _load_key(pki_dir / f"{SERVICE_ACCOUNT}.key")
    need_sa = sa_key is None

    fresh = sum(1 for _, k, _ in plan if k is None) + need_sa
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        new_keys = iter(list(pool.map(lambda _: _new_key(key_type), range(fresh))))

    for spec, key, action in plan:
        new_key = key is None
        key = key or next(new_keys)
        cert = _issue_leaf(spec, key, *cas[spec.issuer], cluster.pki.cert_validity_days, now)
        if new_key:
            write_private(pki_dir / f"{spec.name}.key", _key_pem(key))
        write_public(pki_dir / f"{spec.name}.crt", cert.public_bytes(serialization.Encoding.PEM))
        report.actions[spec.name] = action

    # Service accounts: a key pair, no certificate. The apiserver verifies with .pub,
    # signs with .key; the controller-manager signs with .key.
    if need_sa:
        sa_key = next(new_keys)
        write_private(pki_dir / f"{SERVICE_ACCOUNT}.key", _key_pem(sa_key))
    pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub_path = pki_dir / f"{SERVICE_ACCOUNT}.pub"
    if need_sa or not pub_path.exists() or pub_path.read_bytes() != pub:
        write_public(pub_path, pub)
        report.actions[SERVICE_ACCOUNT] = "created" if need_sa else "re-issued: public key rewritten"
    else:
        _fix_mode(pki_dir / f"{SERVICE_ACCOUNT}.key")
        report.actions[SERVICE_ACCOUNT] = "kept"

    report.actions["encryption-config"] = ensure_encryption_config(pki_dir / ENCRYPTION_CONFIG)
    if cluster.cni == "weave":
        report.actions[WEAVE_PASSWORD] = ensure_weave_password(pki_dir / WEAVE_PASSWORD)
    return report


def _fix_mode(path: Path) -> None:
    """Keys that someone loosened are tightened again; contents stay untouched."""
    if path.exists() and (path.stat().st_mode & 0o777) != 0o600:
        os.chmod(path, 0o600)


# --------------------------------------------------------------------------- encryption at rest


def encryption_config(secret_b64: str) -> str:
    """EncryptionConfiguration for the apiserver: Secrets sealed with secretbox (XSalsa20 +
    Poly1305, recommended over aescbc), identity last so data written before still reads."""
    doc = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": ["secrets"],
                "providers": [
                    {"secretbox": {"keys": [{"name": "key1", "secret": secret_b64}]}},
                    {"identity": {}},
                ],
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def encryption_secret(path: Path) -> str | None:
    """The key inside an existing encryption config, or None if absent/unreadable."""
    try:
        doc = yaml.safe_load(path.read_text())
        providers = doc["resources"][0]["providers"]
        secret = providers[0]["secretbox"]["keys"][0]["secret"]
        if len(base64.b64decode(secret, validate=True)) == 32:
            return secret
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, ValueError):
        return None
    return None


def ensure_encryption_config(path: Path) -> str:
    """Generate the key once; afterwards keep it (losing it makes every Secret unreadable)."""
    secret = encryption_secret(path)
    if secret is None and path.exists():
        raise PkiError(f"{path} exists but holds no usable secretbox key. Replacing it would make "
                       "every Secret in etcd unreadable. Fix: restore it from your backup, or delete "
                       "it only for a cluster whose etcd holds no Secrets yet.")
    if secret is None:
        secret = base64.b64encode(secrets.token_bytes(32)).decode()
        write_private(path, encryption_config(secret).encode())
        return "created"
    # A valid file is kept byte for byte: after a key rotation it holds more than one key,
    # and dropping any would make the Secrets written with it unreadable.
    _fix_mode(path)
    return "kept"


# --------------------------------------------------------------------------- Weave Net


def ensure_weave_password(path: Path) -> str:
    """Weave Net's mesh password, generated once and then kept: every peer must hold the same
    one, and a new one would split the mesh until every node restarted with it."""
    try:
        current = path.read_text().strip()
    except OSError:
        current = ""
    if len(current) >= 32:
        _fix_mode(path)
        return "kept"
    if path.exists():
        raise PkiError(f"{path} holds no usable Weave password (32 or more characters). Fix: restore "
                       "it from your backup, or delete it to make a new one (every weave-net pod then "
                       "restarts with it).")
    write_private(path, (secrets.token_urlsafe(32) + "\n").encode())
    return "created"
