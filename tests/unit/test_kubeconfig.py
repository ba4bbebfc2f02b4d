"""Kubeconfigs parse, point at the right apiserver and carry the right identity."""

from __future__ import annotations

import base64
import hashlib
import stat
import subprocess

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from kthw.kubeconfig import kubeconfig_specs, write_kubeconfigs
from kthw.model import DEFAULT_CLUSTER_FILE
from kthw.pki import ensure_pki
from tests.conftest import make_cluster

LB = "https://192.168.56.30:6443"
LOCAL = "https://127.0.0.1:6443"
NODE = "https://127.0.0.1:7445"  # each node's own HAProxy, in front of every apiserver
EXPECTED = {
    "admin": (LB, "admin"),
    "admin-local": (LOCAL, "admin"),
    "kube-controller-manager": (LOCAL, "system:kube-controller-manager"),
    "kube-scheduler": (LOCAL, "system:kube-scheduler"),
    "kube-proxy": (NODE, "system:kube-proxy"),
    "kubelet-master-1": (NODE, "system:node:master-1"),  # masters are (tainted) nodes too
    "kubelet-master-2": (NODE, "system:node:master-2"),
    "kubelet-worker-1": (NODE, "system:node:worker-1"),
    "kubelet-worker-2": (NODE, "system:node:worker-2"),
}


@pytest.fixture(scope="module")
def kubeconfigs(tmp_path_factory):
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    cluster = make_cluster(raw, tmp_path_factory.mktemp("state"))
    ensure_pki(cluster)
    actions = write_kubeconfigs(cluster)
    return cluster, actions


def test_every_kubeconfig_is_written(kubeconfigs):
    cluster, actions = kubeconfigs
    assert set(actions) == set(EXPECTED) == {s.name for s in kubeconfig_specs(cluster)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_server_identity_and_trust(kubeconfigs, name, tmp_path):
    cluster, _ = kubeconfigs
    path = cluster.kubeconfig_dir / f"{name}.kubeconfig"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = yaml.safe_load(path.read_text())
    ctx = next(c for c in doc["contexts"] if c["name"] == doc["current-context"])["context"]
    clus = next(c for c in doc["clusters"] if c["name"] == ctx["cluster"])["cluster"]
    user = next(u for u in doc["users"] if u["name"] == ctx["user"])["user"]
    server, identity = EXPECTED[name]
    assert clus["server"] == server
    assert ctx["cluster"] == cluster.name
    cert_pem = base64.b64decode(user["client-certificate-data"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity
    assert ctx["user"] == identity
    # The embedded CA is the cluster CA and it vouches for the embedded client cert.
    ca_pem = base64.b64decode(clus["certificate-authority-data"])
    assert ca_pem == (cluster.pki_dir / "ca.crt").read_bytes()
    (tmp_path / "ca.crt").write_bytes(ca_pem)
    (tmp_path / "c.crt").write_bytes(cert_pem)
    ok = subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile", tmp_path / "ca.crt",
                         tmp_path / "c.crt"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    # The embedded key is the one that belongs to the certificate.
    key_pem = base64.b64decode(user["client-key-data"])
    pub = subprocess.run(["openssl", "pkey", "-pubout"], input=key_pem, capture_output=True, check=True)
    assert pub.stdout == subprocess.run(["openssl", "x509", "-noout", "-pubkey"], input=cert_pem,
                                        capture_output=True, check=True).stdout


def test_rerun_keeps_kubeconfigs_byte_identical(kubeconfigs):
    cluster, _ = kubeconfigs
    digest = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                      for p in cluster.kubeconfig_dir.iterdir()}
    before = digest()
    assert set(write_kubeconfigs(cluster).values()) == {"kept"}
    assert digest() == before


def test_loadbalancer_move_rewrites_only_the_operators_kubeconfig(tmp_path, raw_cluster):
    """Nodes never name the load balancer: moving it touches no node's files."""
    cluster = make_cluster(raw_cluster, tmp_path)
    ensure_pki(cluster)
    write_kubeconfigs(cluster)
    raw_cluster["nodes"][0]["ip"] = "192.168.56.40"
    moved = make_cluster(raw_cluster, tmp_path)
    ensure_pki(moved)
    actions = write_kubeconfigs(moved)
    assert {n for n, a in actions.items() if a != "kept"} == {"admin"}
