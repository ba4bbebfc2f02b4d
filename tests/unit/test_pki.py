"""The PKI: checked with openssl itself, and for idempotency and re-issue rules."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import stat
import subprocess
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID

from kthw.model import DEFAULT_CLUSTER_FILE, load_cluster
from kthw.pki import (
    PkiError,
    cert_eku,
    cert_sans,
    cert_specs,
    encryption_secret,
    ensure_pki,
)
from tests.conftest import make_cluster, scaled

SERVER, CLIENT = frozenset({EKU.SERVER_AUTH}), frozenset({EKU.CLIENT_AUTH})
BOTH = SERVER | CLIENT


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The default cluster's PKI, generated once for the read-only tests here."""
    state = tmp_path_factory.mktemp("state")
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    cluster = make_cluster(raw, state)
    report = ensure_pki(cluster)
    return cluster, cluster.pki_dir, report


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


def load(pki_dir: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki_dir / f"{name}.crt").read_bytes())


def subject(cert: x509.Certificate) -> tuple[str, tuple[str, ...]]:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = tuple(a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    return cn, orgs


ETCD_SIGNED = {"etcd-server-master-1", "etcd-server-master-2", "apiserver-etcd-client"}  # by etcd's own CA
FRONT_PROXY_SIGNED = {"front-proxy-client"}  # by the aggregation layer's CA; the rest by the cluster CA
EXPECTED = {
    # name: (CN, O, DNS SANs, IP SANs, EKU)
    "admin": ("admin", ("system:masters",), set(), set(), CLIENT),
    "kube-controller-manager": ("system:kube-controller-manager", (), set(), set(), CLIENT),
    "kube-scheduler": ("system:kube-scheduler", (), set(), set(), CLIENT),
    "kube-proxy": ("system:kube-proxy", ("system:node-proxier",), set(), set(), CLIENT),
    "kube-apiserver": (
        "kube-apiserver", (),
        {"kubernetes", "kubernetes.default", "kubernetes.default.svc",
         "kubernetes.default.svc.cluster", "kubernetes.default.svc.cluster.local"},
        {"10.96.0.1", "192.168.56.11", "192.168.56.12", "192.168.56.30", "127.0.0.1"},
        SERVER,
    ),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", (), set(), set(), CLIENT),
    "apiserver-etcd-client": ("kube-apiserver-etcd-client", (), set(), set(), CLIENT),
    # One per etcd member, valid for its own address only; the shared CN is what peers must show.
    "etcd-server-master-1": ("etcd-server", (), {"master-1"}, {"192.168.56.11", "127.0.0.1"}, BOTH),
    "etcd-server-master-2": ("etcd-server", (), {"master-2"}, {"192.168.56.12", "127.0.0.1"}, BOTH),
    "front-proxy-client": ("front-proxy-client", (), set(), set(), CLIENT),
    # Masters are Kubernetes nodes too (tainted control-plane).
    "kubelet-master-1": ("system:node:master-1", ("system:nodes",), {"master-1"}, {"192.168.56.11"}, BOTH),
    "kubelet-master-2": ("system:node:master-2", ("system:nodes",), {"master-2"}, {"192.168.56.12"}, BOTH),
    "kubelet-worker-1": ("system:node:worker-1", ("system:nodes",), {"worker-1"}, {"192.168.56.21"}, BOTH),
    "kubelet-worker-2": ("system:node:worker-2", ("system:nodes",), {"worker-2"}, {"192.168.56.22"}, BOTH),
}


def test_every_credential_of_the_reference_is_made(pki):
    cluster, _, report = pki
    assert {s.name for s in cert_specs(cluster)} == set(EXPECTED)
    assert set(report.actions) == {"ca", "etcd-ca", "front-proxy-ca", *EXPECTED, "service-account", "encryption-config",
                                   "weave-password"}
    assert set(report.actions.values()) == {"created"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_openssl_verifies_every_leaf_against_the_ca(pki, name):
    _, pki_dir, _ = pki
    purpose = {SERVER: "sslserver", CLIENT: "sslclient", BOTH: "sslserver"}[EXPECTED[name][4]]
    ca = "etcd-ca" if name in ETCD_SIGNED else "front-proxy-ca" if name in FRONT_PROXY_SIGNED else "ca"
    verify = lambda ca_name: subprocess.run(  # noqa: E731
        ["openssl", "verify", "-purpose", purpose, "-CAfile", pki_dir / f"{ca_name}.crt", pki_dir / f"{name}.crt"],
        capture_output=True, text=True,
    )
    out = verify(ca)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(": OK")
    for other in {"ca", "etcd-ca", "front-proxy-ca"} - {ca}:
        assert verify(other).returncode != 0  # and only by its own CA


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_subject_sans_and_usages(pki, name):
    _, pki_dir, _ = pki
    cn, orgs, dns, ips, eku = EXPECTED[name]
    cert = load(pki_dir, name)
    assert subject(cert) == (cn, orgs)
    got_dns, got_ips = cert_sans(cert)
    assert got_dns == dns
    assert got_ips == {IPv4Address(i) for i in ips}
    assert cert_eku(cert) == eku
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign


def test_ca_is_constrained(pki):
    _, pki_dir, _ = pki
    ca = load(pki_dir, "ca")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert ca.issuer == ca.subject


def test_validity_is_sensible(pki):
    cluster, pki_dir, _ = pki
    ca, leaf = load(pki_dir, "ca"), load(pki_dir, "admin")
    ca_days = (ca.not_valid_after_utc - ca.not_valid_before_utc).days
    leaf_days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
    assert ca_days == cluster.pki.ca_validity_days
    assert leaf_days == cluster.pki.cert_validity_days
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc


def test_the_aggregation_layer_has_its_own_ca(pki):
    # Aggregated API servers believe X-Remote-User only from this CA's certificates: no other
    # certificate of the cluster (a kubelet's, an admin's) can pose as the apiserver's proxy.
    _, pki_dir, _ = pki
    fp_ca, ca = load(pki_dir, "front-proxy-ca"), load(pki_dir, "ca")
    assert subject(fp_ca)[0] == "FRONT-PROXY-CA" and fp_ca.public_key() != ca.public_key()
    assert load(pki_dir, "front-proxy-client").issuer == fp_ca.subject


def test_etcd_has_its_own_ca(pki):
    _, pki_dir, _ = pki
    etcd_ca, ca = load(pki_dir, "etcd-ca"), load(pki_dir, "ca")
    assert subject(etcd_ca)[0] == "ETCD-CA" and etcd_ca.public_key() != ca.public_key()
    assert load(pki_dir, "etcd-server-master-1").issuer == etcd_ca.subject


@pytest.mark.parametrize("name", ["ca", "etcd-ca", "front-proxy-ca", *sorted(EXPECTED)])
def test_key_matches_certificate_per_openssl(pki, name):
    _, pki_dir, _ = pki
    from_cert = subprocess.run(["openssl", "x509", "-noout", "-pubkey", "-in", pki_dir / f"{name}.crt"],
                               capture_output=True, check=True).stdout
    from_key = subprocess.run(["openssl", "pkey", "-pubout", "-in", pki_dir / f"{name}.key"],
                              capture_output=True, check=True).stdout
    assert from_cert == from_key


def test_service_account_key_pair(pki):
    _, pki_dir, _ = pki
    key = serialization.load_pem_private_key((pki_dir / "service-account.key").read_bytes(), None)
    pub = serialization.load_pem_public_key((pki_dir / "service-account.pub").read_bytes())
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*fmt) == pub.public_bytes(*fmt)


def test_file_modes(pki):
    _, pki_dir, _ = pki
    assert stat.S_IMODE(pki_dir.stat().st_mode) == 0o700
    for path in pki_dir.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.suffix == ".key" or path.name in ("encryption-config.yaml", "weave-password"):
            assert mode == 0o600, path.name
        else:
            assert mode == 0o644, path.name


def test_encryption_config(pki):
    _, pki_dir, _ = pki
    doc = yaml.safe_load((pki_dir / "encryption-config.yaml").read_text())
    assert doc["apiVersion"] == "apiserver.config.k8s.io/v1"
    assert doc["kind"] == "EncryptionConfiguration"
    res = doc["resources"][0]
    assert res["resources"] == ["secrets"]
    assert list(res["providers"][0]) == ["secretbox"]
    assert res["providers"][-1] == {"identity": {}}
    assert len(base64.b64decode(encryption_secret(pki_dir / "encryption-config.yaml"))) == 32


# --------------------------------------------------------------------------- reruns and re-issue


@pytest.fixture
def fresh(tmp_path, raw_cluster):
    cluster = make_cluster(raw_cluster, tmp_path)
    ensure_pki(cluster)
    return raw_cluster, tmp_path, cluster


def test_rerun_is_byte_identical(fresh):
    _, _, cluster = fresh
    before = snapshot(cluster.pki_dir)
    report = ensure_pki(cluster)
    assert report.changed == []
    assert snapshot(cluster.pki_dir) == before


def test_changing_a_master_ip_reissues_exactly_the_certs_that_carry_it(fresh):
    raw, state, cluster = fresh
    before = snapshot(cluster.pki_dir)
    raw["nodes"][2]["ip"] = "192.168.56.13"
    report = ensure_pki(make_cluster(raw, state))
    # (master-2's own kubelet certificate carries its address too.)
    assert sorted(report.changed) == ["etcd-server-master-2", "kube-apiserver", "kubelet-master-2"]
    after = snapshot(cluster.pki_dir)
    assert {n for n in after if after[n] != before[n]} == {"etcd-server-master-2.crt", "kube-apiserver.crt",
                                                           "kubelet-master-2.crt"}
    _, ips = cert_sans(load(cluster.pki_dir, "kube-apiserver"))
    assert IPv4Address("192.168.56.13") in ips and IPv4Address("192.168.56.12") not in ips


def test_an_etcd_only_member_on_the_load_balancer_gets_its_own_member_certificate(fresh, tmp_path):
    raw, state, cluster = fresh
    raw["nodes"][0]["etcd"] = True
    report = ensure_pki(make_cluster(raw, state))
    assert report.changed == ["etcd-server-loadbalancer"]  # nothing else carries it
    cert = load(cluster.pki_dir, "etcd-server-loadbalancer")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "etcd-server"
    assert cert.issuer == load(cluster.pki_dir, "etcd-ca").subject
    dns, ips = cert_sans(cert)
    assert dns == {"loadbalancer"} and set(ips) == {IPv4Address("192.168.56.30"), IPv4Address("127.0.0.1")}
    ok = subprocess.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", cluster.pki_dir / "etcd-ca.crt",
                         cluster.pki_dir / "etcd-server-loadbalancer.crt"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_renaming_a_worker_issues_its_new_cert(fresh):
    raw, state, cluster = fresh
    raw["nodes"][4]["name"] = "worker-9"
    report = ensure_pki(make_cluster(raw, state))
    assert report.changed == ["kubelet-worker-9"]


def test_cert_expiring_within_the_window_is_reissued(fresh):
    _, _, cluster = fresh
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=cluster.pki.cert_validity_days - 10)
    report = ensure_pki(cluster, now=later)
    leaves = set(EXPECTED)
    assert set(report.changed) == leaves
    assert all("within the renewal window" in report[n] for n in leaves)


def test_reissue_keeps_the_key(fresh):
    raw, state, cluster = fresh
    key_before = (cluster.pki_dir / "kube-apiserver.key").read_bytes()
    raw["cluster"]["domain"] = "example.internal"
    ensure_pki(make_cluster(raw, state))
    assert (cluster.pki_dir / "kube-apiserver.key").read_bytes() == key_before
    dns, _ = cert_sans(load(cluster.pki_dir, "kube-apiserver"))
    assert "kubernetes.default.svc.example.internal" in dns


def test_a_tampered_cert_is_reissued(fresh):
    raw, state, cluster = fresh
    other = make_cluster(raw, state / "other")
    ensure_pki(other)  # a second CA
    (cluster.pki_dir / "admin.crt").write_bytes((other.pki_dir / "admin.crt").read_bytes())
    (cluster.pki_dir / "admin.key").write_bytes((other.pki_dir / "admin.key").read_bytes())
    report = ensure_pki(cluster)
    assert report["admin"].startswith("re-issued")


def test_key_type_change_reissues_with_new_keys(fresh):
    raw, state, _ = fresh
    raw["pki"]["key_type"] = "ecdsa-p256"
    report = ensure_pki(make_cluster(raw, state))
    assert set(report.changed) == set(EXPECTED)
    assert report["ca"] == "kept"  # the CA is never replaced on its own


def test_loosened_key_mode_is_tightened(fresh):
    _, _, cluster = fresh
    (cluster.pki_dir / "admin.key").chmod(0o644)
    ensure_pki(cluster)
    assert stat.S_IMODE((cluster.pki_dir / "admin.key").stat().st_mode) == 0o600


def test_missing_ca_key_is_an_error_not_a_new_ca(fresh):
    _, _, cluster = fresh
    (cluster.pki_dir / "ca.key").unlink()
    with pytest.raises(PkiError, match="never replaced automatically"):
        ensure_pki(cluster)
    assert (cluster.pki_dir / "ca.crt").exists()


def test_mismatched_ca_key_is_an_error(fresh):
    raw, state, cluster = fresh
    other = make_cluster(raw, state / "other")
    ensure_pki(other)
    (cluster.pki_dir / "ca.key").write_bytes((other.pki_dir / "ca.key").read_bytes())
    with pytest.raises(PkiError, match="does not belong"):
        ensure_pki(cluster)


def test_encryption_key_is_generated_once_and_kept(fresh):
    _, _, cluster = fresh
    path = cluster.pki_dir / "encryption-config.yaml"
    secret = encryption_secret(path)
    ensure_pki(cluster)
    assert encryption_secret(path) == secret


def test_weave_password_is_generated_once_kept_and_only_for_weave(fresh, tmp_path, raw_cluster):
    _, _, cluster = fresh
    path = cluster.pki_dir / "weave-password"
    password = path.read_text()
    assert len(password.strip()) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    assert ensure_pki(cluster).actions["weave-password"] == "kept"
    assert path.read_text() == password and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("short\n")
    with pytest.raises(PkiError, match="no usable Weave password"):
        ensure_pki(cluster)
    raw_cluster["cni"] = "bridge"
    bridge = make_cluster(raw_cluster, tmp_path / "bridge")
    assert "weave-password" not in ensure_pki(bridge).actions
    assert not (bridge.pki_dir / "weave-password").exists()


def test_unreadable_encryption_config_is_an_error(fresh):
    _, _, cluster = fresh
    (cluster.pki_dir / "encryption-config.yaml").write_text("garbage: [")
    with pytest.raises(PkiError, match="unreadable"):
        ensure_pki(cluster)


def test_large_cluster(tmp_path):
    cluster = make_cluster(scaled(3, 20), tmp_path)
    report = ensure_pki(cluster)
    assert len([n for n in report.actions if n.startswith("kubelet-")]) == 23  # 20 workers, 3 masters
    _, ips = cert_sans(load(cluster.pki_dir, "etcd-server-master-3"))
    assert len(ips) == 2  # its own address and loopback, however many members


def test_cli_never_prints_key_material(tmp_path, monkeypatch, capsys):
    from kthw.__main__ import main

    monkeypatch.setenv("KTHW_STATE_DIR", str(tmp_path))
    assert main(["pki"]) == 0
    assert main(["pki"]) == 0
    out = capsys.readouterr()
    cluster = load_cluster()
    secret = encryption_secret(cluster.pki_dir / "encryption-config.yaml")
    for text in (out.out, out.err):
        assert "PRIVATE KEY" not in text
        assert secret not in text


def test_the_apiserver_certificate_covers_both_load_balancers_and_the_virtual_ip(tmp_path, raw_cluster):
    raw_cluster["nodes"].insert(1, {"name": "loadbalancer-2", "role": "loadbalancer", "ip": "192.168.56.31"})
    raw_cluster["network"]["api_vip"] = "192.168.56.40"
    cluster = make_cluster(raw_cluster, tmp_path)
    ensure_pki(cluster)
    _, ips = cert_sans(load(cluster.pki_dir, "kube-apiserver"))
    assert {IPv4Address("192.168.56.30"), IPv4Address("192.168.56.31"), IPv4Address("192.168.56.40")} <= set(ips)
