"""Rotating the CAs on a running cluster (docs/pki.md: CA rotation): three steps, a deploy after each,
requests through the load balancer all along. Afterwards everything runs on the new CAs, the old
CA's certificates are refused, and what was not a CA (Secrets, service-account tokens) still works."""

from __future__ import annotations

import base64
import ssl
import sys
import time

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.lab.lab import Lab, RequestLoop, reference_only, sh
from tests.lab.test_cluster import ADMIN, masters


def ca(lab: Lab) -> x509.Certificate:
    return x509.load_pem_x509_certificate((lab.cluster.pki_dir / "ca.crt").read_bytes())


def csr_signed_by_the_cluster(lab: Lab, name: str) -> x509.Certificate:
    """A client certificate through the certificates API: the controller-manager signs it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    request = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
               "metadata": {"name": name},
               "spec": {"request": base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode(),
                        "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"],
                        "expirationSeconds": 600}}
    sh([str(lab.kubectl_binary), "--kubeconfig", str(lab.cluster.kubeconfig_dir / "admin.kubeconfig"),
        "apply", "-f", "-"], input=yaml.safe_dump(request))
    lab.kubectl("certificate", "approve", name)
    issued = lab.wait(f"CSR {name} signed", lambda: lab.kubectl(
        "get", "csr", name, "-o", "jsonpath={.status.certificate}"), timeout=60, interval=1)
    lab.kubectl("delete", "csr", name)
    return x509.load_pem_x509_certificate(base64.b64decode(issued))


def rotate(lab: Lab, step: str) -> str:
    return sh([sys.executable, "-m", "kthw", "pki", "rotate-ca", step], env=lab.env).stdout


@pytest.mark.day_two
def test_the_cas_rotate_in_three_steps_without_a_failed_request(lab, tmp_path):
    reference_only(lab)
    old_ca = ca(lab)
    lab.kubectl("create", "secret", "generic", "kthw-rotation-probe", "--from-literal=k=before")
    token = lab.kubectl("create", "token", "default", "--duration=2h").strip()
    old_admin = yaml.safe_load((lab.cluster.kubeconfig_dir / "admin.kubeconfig").read_text())["users"][0]["user"]
    for part, field in (("admin.crt", "client-certificate-data"), ("admin.key", "client-key-data")):
        (tmp_path / part).write_bytes(base64.b64decode(old_admin[field]))

    # finishing before the hosts caught up is refused, naming what is missing
    rotate(lab, "begin")
    early = sh([sys.executable, "-m", "kthw", "pki", "rotate-ca", "switch"], env=lab.env, check=False)
    assert early.returncode != 0 and "does not trust the new ca yet" in early.stderr, early.stderr
    assert "Nothing was changed" in early.stderr

    start = time.monotonic()
    with RequestLoop(lab) as loop:
        lab.deploy(label="deploy after rotate-ca begin")
        rotate(lab, "switch")
        lab.deploy(label="deploy after rotate-ca switch")
        rotate(lab, "finish")
        lab.deploy(label="deploy after rotate-ca finish")
    lab.timings["CA rotation (3 steps and 3 deploys)"] = time.monotonic() - start
    print(f"\nCA rotation: {loop.requests} requests through the load balancer, {len(loop.failures)} failed")
    assert loop.failures == [], loop.failures

    new_ca = ca(lab)
    assert new_ca != old_ca
    # every apiserver serves a certificate of the new CA, directly and through the load balancer
    for address in [lab.cluster.loadbalancer.ip, *(m.ip for m in lab.cluster.masters)]:
        served = x509.load_pem_x509_certificate(ssl.get_server_certificate((str(address), 6443)).encode())
        served.verify_directly_issued_by(new_ca)
    # the trust published to pods is the new CA alone; the add-on pods run with it
    published = lab.kubectl("-n", "kube-system", "get", "configmap", "kube-root-ca.crt", "-o",
                            "jsonpath={.data.ca\\.crt}")
    assert x509.load_pem_x509_certificates(published.encode()) == [new_ca]
    lab.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s")
    lab.kubectl("-n", "kube-system", "rollout", "status", "daemonset/weave-net", "--timeout=300s", timeout=330)
    ready = lab.kubectl("get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}")
    assert set(ready.split()) == {"True"}, ready
    # the controller-manager signs with the new CA
    csr_signed_by_the_cluster(lab, "kthw-rotation-csr").verify_directly_issued_by(new_ca)
    # the old admin certificate is refused; Secrets and tokens made before still work
    refused = sh([str(lab.kubectl_binary), "--kubeconfig=/dev/null", "--server",
                  f"https://{lab.cluster.loadbalancer.ip}:6443",
                  "--certificate-authority", str(lab.cluster.pki_dir / "ca.crt"),
                  "--client-certificate", str(tmp_path / "admin.crt"), "--client-key", str(tmp_path / "admin.key"),
                  "get", "nodes"], check=False)
    assert refused.returncode != 0 and "Unauthorized" in refused.stderr, refused.stderr
    assert lab.kubectl("get", "secret", "kthw-rotation-probe", "-o", "jsonpath={.data.k}") == "YmVmb3Jl"
    whoami = sh([str(lab.kubectl_binary), "--kubeconfig=/dev/null", "--token", token, "--server",
                 f"https://{lab.cluster.loadbalancer.ip}:6443",
                 "--certificate-authority", str(lab.cluster.pki_dir / "ca.crt"),
                 "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"], check=False).stdout
    assert whoami == "system:serviceaccount:default:default", whoami
    for m in masters(lab):
        assert lab.ssh(m, f"{ADMIN} get --raw /readyz").strip() == "ok"
    # and the cluster is converged: the next run changes nothing
    plan = lab.plan()
    assert not [name for name, p in plan.items() if p["hosts_with_change"]]
    lab.kubectl("delete", "secret", "kthw-rotation-probe")
