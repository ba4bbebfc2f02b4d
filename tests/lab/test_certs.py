"""Certificates over time: `python -m kthw certs` reports every certificate on every node, and a
renewal by the deploy reaches every service (each serves the new certificate afterwards)."""

from __future__ import annotations

import socket
import ssl
import sys

from cryptography import x509

from kthw.hostcerts import owed_restarts, ssh_reader
from kthw.pki import cert_specs
from tests.lab.lab import Lab, reference_only, sh


def served(address: str, port: int, client: tuple[str, str] | None = None) -> x509.Certificate:
    """The certificate a TLS server presents (with a client certificate where it asks for one)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if client:
        ctx.load_cert_chain(*client)
    with socket.create_connection((address, port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def serving(lab: Lab) -> dict[str, x509.Certificate]:
    pki = lab.cluster.pki_dir
    etcd_client = (str(pki / "apiserver-etcd-client.crt"), str(pki / "apiserver-etcd-client.key"))
    out = {}
    for m in lab.cluster.masters:
        out[f"{m.name} kube-apiserver"] = served(str(m.ip), 6443)
        out[f"{m.name} etcd"] = served(str(m.ip), 2379, etcd_client)
    for n in lab.cluster.kubelet_nodes:
        out[f"{n.name} kubelet"] = served(str(n.ip), 10250)
    return out


def test_certs_lists_every_certificate_with_its_days_left(lab):
    out = sh([sys.executable, "-m", "kthw", "certs"], env=lab.env)
    for n in lab.cluster.nodes:
        if n.role != "loadbalancer":
            assert f"\n{n.name} " in out.stdout, n.name
    assert "/etc/etcd/etcd-server.crt" in out.stdout and "CA CN=KUBERNETES-CA" in out.stdout
    assert "PRIVATE KEY" not in out.stdout + out.stderr
    assert ", none expires within" in out.stdout
    # a window wider than any certificate's life: every one is due, and the exit code says so (cron)
    due = sh([sys.executable, "-m", "kthw", "certs", "--within", "100000"], env=lab.env, check=False)
    assert due.returncode == 1 and "expire within 100000 days: rerun the deploy" in due.stdout


def test_a_renewal_reaches_every_service(lab):
    reference_only(lab)
    before = serving(lab)
    for spec in cert_specs(lab.cluster):  # every leaf re-issued (keys kept), as on expiry
        (lab.cluster.pki_dir / f"{spec.name}.crt").unlink()
    lab.deploy(label="renewal of every leaf certificate")
    after = serving(lab)
    for what, cert in after.items():
        assert cert.serial_number != before[what].serial_number, f"{what} still serves the old certificate"
    local = {x509.load_pem_x509_certificate((lab.cluster.pki_dir / f"{s.name}.crt").read_bytes()).serial_number
             for s in cert_specs(lab.cluster)}
    assert {c.serial_number for c in after.values()} <= local
    # the clients too: every certificate on every node is the new one, and no service runs on an older file
    hosts = ssh_reader(lab.cluster)()
    for node, host in hosts.items():
        old = [p for p, c in host.leaves.items() if c.serial_number not in local and not p.endswith("ca-signing.crt")]
        assert old == [], (node, old)
        assert owed_restarts(host) == [], node
    lab.served_through_load_balancer()
