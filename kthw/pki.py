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

This module issues; the CAs' files and a rotation's state are the CA store's (kthw/castore.py),
the encryption config and the Weave password kthw/cluster_secrets.py's, and writing and reading
the files kthw/pkifiles.py's. Their names other modules use are importable from here too.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Re-exported (``import X as X``): other modules import these from kthw.pki.
from kthw.castore import CA_NAME as CA_NAME
from kthw.castore import CA_SUBJECTS as CA_SUBJECTS
from kthw.castore import ETCD_CA_NAME as ETCD_CA_NAME
from kthw.castore import FRONT_PROXY_CA_NAME as FRONT_PROXY_CA_NAME
from kthw.castore import NEXT as NEXT
from kthw.castore import PREVIOUS as PREVIOUS
from kthw.castore import RETIRED as RETIRED
from kthw.castore import check_rotation, save_ca, signing_ca
from kthw.castore import known_trust as known_trust
from kthw.castore import rotation_step as rotation_step
from kthw.castore import trust_bundle as trust_bundle
from kthw.cluster_secrets import ENCRYPTION_CONFIG as ENCRYPTION_CONFIG
from kthw.cluster_secrets import WEAVE_PASSWORD as WEAVE_PASSWORD
from kthw.cluster_secrets import encryption_config as encryption_config
from kthw.cluster_secrets import encryption_secret as encryption_secret
from kthw.cluster_secrets import ensure_cluster_secrets
from kthw.cluster_secrets import ensure_encryption_config as ensure_encryption_config
from kthw.cluster_secrets import ensure_weave_password as ensure_weave_password
from kthw.model import Cluster
from kthw.pkifiles import PkiError as PkiError
from kthw.pkifiles import PrivateKey as PrivateKey
from kthw.pkifiles import cert_pem, fix_mode, key_pem, load_cert, load_key, same_public_key
from kthw.pkifiles import write_private as write_private
from kthw.pkifiles import write_public as write_public

# The proxy's name, as the apiserver's --requestheader-allowed-names lists it.
FRONT_PROXY_CLIENT = "front-proxy-client"
SERVICE_ACCOUNT = "service-account"
# The cluster's identity: a host holding other versions of these belongs to another cluster (or
# this one was re-created locally). Replacing them would break every Secret, token and
# kubeconfig, so the deploy refuses unless told to (docs/pki.md: "Cluster identity").
IDENTITY_FILES = (f"{CA_NAME}.crt", f"{ETCD_CA_NAME}.crt", f"{FRONT_PROXY_CA_NAME}.crt", f"{SERVICE_ACCOUNT}.pub",
                  ENCRYPTION_CONFIG)
# Backdate certificates a little so a node whose clock lags the operator's accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)


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


_LOOPBACK = IPv4Address("127.0.0.1")  # a master's own components, and every node's local apiserver proxy


def cert_specs(cluster: Cluster) -> list[CertSpec]:
    """Every leaf certificate of the cluster, derived from the model."""
    return [*_control_plane_specs(cluster), *_etcd_member_specs(cluster), *_kubelet_specs(cluster)]


def _control_plane_specs(cluster: Cluster) -> list[CertSpec]:
    """One of each, whatever the topology: clients of the apiserver, the apiserver's own."""
    return [
        CertSpec("admin", "admin", ("system:masters",), client=True,
                 purpose="the operator's kubectl (full access through system:masters)"),
        CertSpec("kube-controller-manager", "system:kube-controller-manager", client=True,
                 purpose="kube-controller-manager's identity at the apiserver"),
        CertSpec("kube-scheduler", "system:kube-scheduler", client=True,
                 purpose="kube-scheduler's identity at the apiserver"),
        CertSpec("kube-proxy", "system:kube-proxy", ("system:node-proxier",), client=True,
                 purpose="kube-proxy's identity at the apiserver"),
        _apiserver_spec(cluster),
        # Bound to ClusterRole system:kubelet-api-admin by RBAC, not to system:masters:
        # the apiserver needs kubelet logs/exec, not cluster-admin.
        CertSpec("apiserver-kubelet-client", "kube-apiserver-kubelet-client", client=True,
                 purpose="apiserver's client certificate at kubelets (logs, exec, port-forward)"),
        CertSpec("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True,
                 purpose="apiserver's client certificate at etcd", issuer=ETCD_CA_NAME),
        CertSpec(FRONT_PROXY_CLIENT, FRONT_PROXY_CLIENT, client=True, issuer=FRONT_PROXY_CA_NAME,
                 purpose="apiserver's client certificate at aggregated API servers (aggregation layer)"),
    ]


def _apiserver_spec(cluster: Cluster) -> CertSpec:
    return CertSpec(
        "kube-apiserver", "kube-apiserver",
        dns_names=(
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster",
            f"kubernetes.default.svc.{cluster.domain}",
        ),
        ip_addresses=(cluster.api_service_ip, *(m.ip for m in cluster.masters),
                      *(lb.ip for lb in cluster.loadbalancers), *([cluster.api_vip] if cluster.api_vip else []),
                      _LOOPBACK),
        server=True,
        purpose="apiserver serving certificate, valid for every way clients reach it",
    )


def _etcd_member_specs(cluster: Cluster) -> list[CertSpec]:
    return [CertSpec(
        etcd_member_cert_name(m.name), ETCD_MEMBER_CN, dns_names=(m.name,), ip_addresses=(m.ip, _LOOPBACK),
        server=True, client=True, issuer=ETCD_CA_NAME,
        purpose=f"etcd member {m.name}: serving and peer certificate (peers are clients of each other)",
    ) for m in cluster.etcd_members]


def _kubelet_specs(cluster: Cluster) -> list[CertSpec]:
    return [CertSpec(
        kubelet_cert_name(w.name), f"system:node:{w.name}", ("system:nodes",),
        dns_names=(w.name,), ip_addresses=(w.ip,), server=True, client=True,
        purpose=f"{w.name}'s kubelet: its identity at the apiserver and its serving certificate",
    ) for w in cluster.kubelet_nodes]


# --------------------------------------------------------------------------- keys


def new_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    bits = int(key_type.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _key_matches_type(key: PrivateKey, key_type: str) -> bool:
    if key_type == "ecdsa-p256":
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    return isinstance(key, rsa.RSAPrivateKey) and key.key_size == int(key_type.split("-")[1])


def _new_keys(key_type: str, count: int) -> Iterator[PrivateKey]:
    """``count`` new keys, generated in parallel (RSA generation dominates the cost and releases the GIL)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return iter(list(pool.map(lambda _: new_key(key_type), range(count))))


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


def new_ca(cluster: Cluster, name: str, now: dt.datetime) -> tuple[x509.Certificate, PrivateKey]:
    """A new self-signed CA (``name``: one of CA_SUBJECTS) and its key; the CA store keeps it."""
    key = new_key(cluster.pki.key_type)
    return _issue_ca(cluster, key, now, name), key


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


# A leaf's plan: its spec, the key to keep (None: a new one) and what the report says.
LeafPlan = tuple[CertSpec, PrivateKey | None, str]


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
    check_rotation(pki_dir, now)  # a half-moved rotation, or a broken second CA, is an error

    # Decide first, then generate all new keys at once.
    plan = _plan_leaves(cluster, pki_dir, cas, now, report)
    sa_key = load_key(pki_dir / f"{SERVICE_ACCOUNT}.key")
    fresh = sum(1 for _, k, _ in plan if k is None) + (sa_key is None)
    new_keys = _new_keys(cluster.pki.key_type, fresh)

    _issue_leaves(cluster, pki_dir, plan, cas, new_keys, now, report)
    report.actions[SERVICE_ACCOUNT] = _ensure_service_account(pki_dir, sa_key, new_keys)
    report.actions.update(ensure_cluster_secrets(pki_dir, weave=cluster.cni == "weave"))
    return report


def _ensure_ca(cluster: Cluster, pki_dir: Path, now: dt.datetime, report: PkiReport, name: str = CA_NAME
               ) -> tuple[x509.Certificate, PrivateKey]:
    """The signing CA as the CA store holds it, or a new one when it holds none."""
    if (ca := signing_ca(pki_dir, name, now)) is not None:
        report.actions[name] = "kept"
        return ca
    cert, key = new_ca(cluster, name, now)
    save_ca(pki_dir, name, cert, key)
    report.actions[name] = "created"
    return cert, key


def _plan_leaves(cluster: Cluster, pki_dir: Path, cas: dict[str, tuple[x509.Certificate, PrivateKey]],
                 now: dt.datetime, report: PkiReport) -> list[LeafPlan]:
    """The leaves to (re)issue; the ones still right are kept as they are (their keys' mode fixed)."""
    renew_before = dt.timedelta(days=cluster.pki.renew_before_days)
    plan: list[LeafPlan] = []
    for spec in cert_specs(cluster):
        crt_path, key_path = pki_dir / f"{spec.name}.crt", pki_dir / f"{spec.name}.key"
        cert, key = load_cert(crt_path), load_key(key_path)
        decision = _leaf_decision(spec, cert, key, cas[spec.issuer][0], cluster.pki.key_type, renew_before, now)
        if decision is None:
            fix_mode(key_path)
            report.actions[spec.name] = "kept"
        else:
            plan.append((spec, *decision))
    return plan


def _leaf_decision(spec: CertSpec, cert: x509.Certificate | None, key: PrivateKey | None,
                   ca_cert: x509.Certificate, key_type: str, renew_before: dt.timedelta, now: dt.datetime
                   ) -> tuple[PrivateKey | None, str] | None:
    """None to keep the leaf; otherwise the key to keep (None: a new one) and the action to report."""
    if key is not None and not _key_matches_type(key, key_type):
        return None, f"re-issued: key type is now {key_type}"
    if cert is None and key is None:
        return None, "created"
    if key is None:
        return None, "re-issued: key missing or unreadable"
    if cert is None:
        return key, "re-issued: certificate missing or unreadable"
    if not same_public_key(key, cert):
        return None, "re-issued: key does not match certificate"
    if reason := _why_reissue(spec, cert, ca_cert, renew_before, now):
        return key, f"re-issued: {reason}"
    return None


def _issue_leaves(cluster: Cluster, pki_dir: Path, plan: list[LeafPlan],
                  cas: dict[str, tuple[x509.Certificate, PrivateKey]], new_keys: Iterator[PrivateKey],
                  now: dt.datetime, report: PkiReport) -> None:
    for spec, key, action in plan:
        new_key = key is None
        key = key or next(new_keys)
        cert = _issue_leaf(spec, key, *cas[spec.issuer], cluster.pki.cert_validity_days, now)
        if new_key:
            write_private(pki_dir / f"{spec.name}.key", key_pem(key))
        write_public(pki_dir / f"{spec.name}.crt", cert_pem(cert))
        report.actions[spec.name] = action


def _ensure_service_account(pki_dir: Path, sa_key: PrivateKey | None, new_keys: Iterator[PrivateKey]) -> str:
    """Service accounts: a key pair, no certificate. The apiserver verifies with .pub,
    signs with .key; the controller-manager signs with .key."""
    need_sa = sa_key is None
    if need_sa:
        sa_key = next(new_keys)
        write_private(pki_dir / f"{SERVICE_ACCOUNT}.key", key_pem(sa_key))
    pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub_path = pki_dir / f"{SERVICE_ACCOUNT}.pub"
    if need_sa or not pub_path.exists() or pub_path.read_bytes() != pub:
        write_public(pub_path, pub)
        return "created" if need_sa else "re-issued: public key rewritten"
    fix_mode(pki_dir / f"{SERVICE_ACCOUNT}.key")
    return "kept"
