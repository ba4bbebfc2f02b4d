"""CIS-style probes of the deployed cluster, each from outside the component it checks: what an
anonymous or wrongly-credentialed client gets, which TLS a server agrees to, file modes.
(That --dry and facts write nothing on any host is tests/lab/test_dry_run.py's.)"""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.lab.lab import Lab
from tests.lab.test_cluster import masters

# Ciphers as OpenSSL names them. ECDHE + AEAD is what every server accepts; the others are
# TLS 1.2 suites Go would otherwise agree to (no forward secrecy, or CBC).
GOOD_CIPHER = {"rsa": "ECDHE-RSA-AES128-GCM-SHA256", "ecdsa": "ECDHE-ECDSA-AES128-GCM-SHA256"}
WEAK_CIPHERS = ("AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA")


def handshake(lab: Lab, address: str, port: int, client: str, ciphers: str = "",
              version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> str:
    """Cipher the server agreed to, with a client certificate from the local PKI; raises
    ssl.SSLError when the server refuses."""
    pki = lab.cluster.pki_dir
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's identity is not what this checks
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    ctx.load_cert_chain(pki / f"{client}.crt", pki / f"{client}.key")
    with socket.create_connection((address, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=address) as tls:
        return tls.cipher()[0]


def servers(lab: Lab) -> list[tuple[str, str, int, str]]:
    """(what, address, port, client certificate) of every TLS server the deploy runs."""
    m, w = lab.cluster.masters[0], lab.cluster.workers[0]
    return [("kube-apiserver", str(m.ip), 6443, "admin"),
            ("kubelet", str(w.ip), 10250, "apiserver-kubelet-client"),
            ("etcd", str(m.ip), 2379, "apiserver-etcd-client")]


def test_servers_agree_only_to_tls12_or_later_with_forward_secret_aead_ciphers(lab):
    kind = "ecdsa" if lab.cluster.pki.key_type.startswith("ecdsa") else "rsa"
    for what, address, port, client in servers(lab):
        assert handshake(lab, address, port, client, GOOD_CIPHER[kind]) == GOOD_CIPHER[kind], what
        assert handshake(lab, address, port, client, version=ssl.TLSVersion.TLSv1_3), what
        for weak in WEAK_CIPHERS:
            with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE|NO_SHARED_CIPHER|handshake failure"):
                handshake(lab, address, port, client, weak)
        with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|protocol version"):
            handshake(lab, address, port, client, "DEFAULT", version=ssl.TLSVersion.TLSv1_1)


def test_anonymous_requests_reach_only_the_health_endpoints(lab):
    lb = lab.cluster.loadbalancer.name
    for m in lab.cluster.masters:
        def status(path: str, ip=m.ip) -> str:
            return lab.ssh(lb, f"curl -sk -o /dev/null -w '%{{http_code}}' https://{ip}:6443{path}")
        assert {p: status(p) for p in ("/livez", "/readyz", "/healthz")} == dict.fromkeys(
            ("/livez", "/readyz", "/healthz"), "200"), m.name
        assert {p: status(p) for p in ("/api", "/version", "/apis", "/metrics")} == dict.fromkeys(
            ("/api", "/version", "/apis", "/metrics"), "401"), m.name


# Admin's client certificate from the master's own kubeconfig, in a scratch folder in memory.
AS_ADMIN = ("d=$(mktemp -d /dev/shm/kthw-probe.XXXXXX) && "
            "awk '/client-certificate-data:/ {print $2}' /etc/kubernetes/admin.kubeconfig | base64 -d > $d/c && "
            "awk '/client-key-data:/ {print $2}' /etc/kubernetes/admin.kubeconfig | base64 -d > $d/k && "
            "curl -sk -o /dev/null -w '%{http_code}' --cert $d/c --key $d/k URL; rm -rf $d")


def test_no_profiling_endpoints(lab):
    out = lab.kubectl("get", "--raw", "/debug/pprof/", check=False)
    assert "NotFound" in out or "could not find" in out, out
    for m in masters(lab):
        # controller-manager and scheduler serve on loopback; admin is allowed everything there,
        # so 404 means the endpoint is gone, not that admin was refused
        for port in (10257, 10259):
            assert lab.script(m, AS_ADMIN.replace("URL", f"https://127.0.0.1:{port}/debug/pprof/")) == "404", (m, port)
            assert lab.script(m, AS_ADMIN.replace("URL", f"https://127.0.0.1:{port}/healthz")) == "200", (m, port)


def test_kubelet_config_is_root_only(lab):
    for node in (n.name for n in lab.cluster.kubelet_nodes):
        assert lab.ssh(node, "stat -c '%a %U' /var/lib/kubelet/kubelet-config.yaml").split() == ["600", "root"]


def test_etcd_peers_need_their_member_certificate(lab):
    first, *others = lab.cluster.masters
    target = others[0] if others else first
    curl = (f"curl -s --http1.1 -o /dev/null -w '%{{http_code}}' --cacert /etc/etcd/etcd-ca.crt "
            f"https://{target.ip}:2380/members")  # (etcd's peer port answers no HTTP/2)
    # A member's own certificate (CN etcd-server) is a peer...
    assert lab.ssh(first.name, f"{curl} --cert /etc/etcd/etcd-server.crt --key /etc/etcd/etcd-server.key") == "200"
    # ...the apiserver's client certificate, from the same etcd CA, is not.
    refused = lab.ssh(first.name, f"{curl} --cert /var/lib/kubernetes/pki/apiserver-etcd-client.crt "
                                  "--key /var/lib/kubernetes/pki/apiserver-etcd-client.key", check=False)
    assert refused != "200", refused
    # and each member's certificate is valid for its own address only
    for m in lab.cluster.masters:
        sans = lab.ssh(m.name, "openssl x509 -noout -ext subjectAltName -in /etc/etcd/etcd-server.crt")
        assert f"IP Address:{m.ip}" in sans
        assert [o.ip for o in lab.cluster.masters if o is not m and f"IP Address:{o.ip}" in sans] == []


def test_pod_security_enforces_baseline_where_a_namespace_sets_nothing(lab, tmp_path):
    """A privileged pod is refused in a namespace without labels, warned about at `restricted`
    for an ordinary one, admitted without a warning where the namespace sets `privileged` for
    every mode; kube-system, exempt, runs the pod network's privileged pods."""
    import json

    def pod(name: str, namespace: str, privileged: bool) -> str:
        spec = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                         "securityContext": {"privileged": privileged}}]}}
        (path := tmp_path / f"{name}.json").write_text(json.dumps(spec))
        return str(path)

    lab.kubectl("create", "namespace", "kthw-psa-default")
    lab.kubectl("create", "namespace", "kthw-psa-privileged")
    # Each mode a namespace leaves unset keeps the cluster's default: opting out means all three.
    lab.kubectl("label", "namespace", "kthw-psa-privileged", *(f"pod-security.kubernetes.io/{mode}=privileged"
                                                                for mode in ("enforce", "audit", "warn")))
    try:
        refused = lab.kubectl("create", "--dry-run=server", "-f", pod("p", "kthw-psa-default", True), check=False)
        assert 'violates PodSecurity "baseline:latest": privileged' in refused, refused
        warned = lab.kubectl("create", "--dry-run=server", "-f", pod("w", "kthw-psa-default", False), check=False)
        assert 'would violate PodSecurity "restricted:latest"' in warned and "created (server dry run)" in warned
        admitted = lab.kubectl("create", "--dry-run=server", "-f", pod("a", "kthw-psa-privileged", True), check=False)
        assert "created (server dry run)" in admitted and "violate" not in admitted, admitted
        exempt = lab.kubectl("create", "--dry-run=server", "-f", pod("k", "kube-system", True), check=False)
        assert "created (server dry run)" in exempt and "violate" not in exempt, exempt
    finally:
        lab.kubectl("delete", "namespace", "kthw-psa-default", "kthw-psa-privileged", "--wait=false")
