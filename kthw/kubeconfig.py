"""Kubeconfigs, emitted from Python with every certificate embedded.

Who talks to which apiserver:

- components on a master (controller-manager, scheduler, the masters' admin) use their own
  apiserver at 127.0.0.1:6443, so a dead load balancer does not stop the control plane;
- every node's kubelet and kube-proxy use the HAProxy on that node's loopback
  (127.0.0.1:7445, operations/apiserver_proxy.py), which reaches every apiserver: neither a
  dead master nor a dead load balancer cuts a node off;
- the operator goes through HAProxy on the load balancer, the cluster's entrance.

Example::

    >>> write_kubeconfigs(cluster)["admin"]
    'kept'
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import yaml

from kthw.model import Cluster
from kthw.pki import CA_NAME, kubelet_cert_name, trust_bundle, write_private


@dataclass(frozen=True)
class KubeconfigSpec:
    name: str  # file: <kubeconfig dir>/<name>.kubeconfig
    cert: str  # PKI file stem of the client certificate
    user: str  # the identity (certificate CN), also the kubeconfig user name
    server: str
    purpose: str


def kubeconfig_specs(cluster: Cluster) -> list[KubeconfigSpec]:
    lb, local, node = cluster.api_server_url, cluster.local_api_server_url, cluster.node_api_server_url
    specs = [
        KubeconfigSpec("admin", "admin", "admin", lb, "the operator's kubectl, through the load balancer"),
        KubeconfigSpec("admin-local", "admin", "admin", local, "kubectl on a master, to its own apiserver"),
        KubeconfigSpec("kube-controller-manager", "kube-controller-manager",
                       "system:kube-controller-manager", local, "kube-controller-manager on each master"),
        KubeconfigSpec("kube-scheduler", "kube-scheduler", "system:kube-scheduler", local,
                       "kube-scheduler on each master"),
        KubeconfigSpec("kube-proxy", "kube-proxy", "system:kube-proxy", node,
                       "kube-proxy on each node, through its local proxy"),
    ]
    for w in cluster.kubelet_nodes:
        specs.append(KubeconfigSpec(kubelet_cert_name(w.name), kubelet_cert_name(w.name),
                                    f"system:node:{w.name}", node, f"{w.name}'s kubelet, through its local proxy"))
    return specs


def render_kubeconfig(cluster_name: str, server: str, user: str, ca_pem: bytes, cert_pem: bytes,
                      key_pem: bytes) -> str:
    """One self-contained kubeconfig (cluster, user, context ``default``)."""
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name,
                      "cluster": {"certificate-authority-data": b64(ca_pem), "server": server}}],
        "users": [{"name": user,
                   "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": "default", "context": {"cluster": cluster_name, "user": user}}],
        "current-context": "default",
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_kubeconfigs(cluster: Cluster, pki_dir: Path | None = None, out_dir: Path | None = None
                      ) -> dict[str, str]:
    """Write every kubeconfig (0600: they hold private keys). A file is rewritten only when
    its content would change, so reruns leave them byte-identical."""
    pki_dir = Path(pki_dir or cluster.pki_dir)
    out_dir = Path(out_dir or cluster.kubeconfig_dir)
    ca_pem = trust_bundle(pki_dir, CA_NAME)  # both CAs during a rotation
    actions = {}
    for spec in kubeconfig_specs(cluster):
        text = render_kubeconfig(
            cluster.name, spec.server, spec.user, ca_pem,
            (pki_dir / f"{spec.cert}.crt").read_bytes(), (pki_dir / f"{spec.cert}.key").read_bytes(),
        ).encode()
        path = out_dir / f"{spec.name}.kubeconfig"
        if path.exists() and path.read_bytes() == text:
            if (path.stat().st_mode & 0o777) != 0o600:
                path.chmod(0o600)
            actions[spec.name] = "kept"
            continue
        actions[spec.name] = "written" if not path.exists() else "rewritten"
        write_private(path, text)
    return actions
