"""Every certificate a node holds, read over SSH with one command: for ``kthw certs`` (days
left) and ``kthw pki rotate-ca`` (has the last step reached every node?).

It reads certificate files and the certificates inside kubeconfigs, never a private key (the
kubeconfigs' ``client-key-data`` lines are not even sent), plus each service's start time and the
CA bundle the controller-manager publishes to pods.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cryptography import x509

from kthw.components import certificate_reads
from kthw.model import Cluster
from kthw.paths import (
    ADMIN_KUBECONFIG,
    ETCD_DIR,
    K8S_DIR,
    K8S_PKI,
    KUBE_PROXY_KUBECONFIG,
    KUBELET_KUBECONFIG,
    KUBELET_PKI,
)
from kthw.pki import CA_NAME, PkiError

# The CA files on a host, by CA (their bundles must trust what the rotation needs).
TRUST_FILES = {"ca.crt": CA_NAME, "etcd-ca.crt": "etcd-ca", "front-proxy-ca.crt": "front-proxy-ca"}
SIGNER_FILE = "ca-signing.crt"  # the controller-manager's signing CA (operations/control_plane.py)
KUBECONFIGS = (f"{K8S_DIR}/*.kubeconfig", ADMIN_KUBECONFIG, KUBELET_KUBECONFIG, KUBE_PROXY_KUBECONFIG)
CERT_GLOBS = (f"{K8S_PKI}/*.crt", f"{ETCD_DIR}/*.crt", f"{KUBELET_PKI}/*.crt")
# Which files each service reads its certificates from, as its component says (a file newer than
# the service's start means the restart that makes it use the file is still owed).
READS = certificate_reads()

# One command per node: every certificate and kubeconfig certificate with its mtime, each
# service's start time, and (where kubectl can ask) the CA bundle published to pods.
_READ = f"""
for f in {' '.join(CERT_GLOBS + KUBECONFIGS)}; do
  [ -f "$f" ] || continue
  echo "==> file $f $(stat -c %Y "$f")"
  case "$f" in
    *.crt) cat "$f";;
    *) grep -E '^ *(certificate-authority-data|client-certificate-data):' "$f" || true;;
  esac
done
for u in {' '.join(READS)}; do
  t=$(systemctl show -p ExecMainStartTimestamp --value "$u" 2>/dev/null)
  [ -n "$t" ] && echo "==> unit $u $(date -d "$t" +%s)"
done
if [ -f {ADMIN_KUBECONFIG} ]; then
  echo "==> configmap kube-system/kube-root-ca.crt"
  kubectl --kubeconfig {ADMIN_KUBECONFIG} -n kube-system get configmap kube-root-ca.crt \\
    -o jsonpath='{{.data.ca\\.crt}}' 2>/dev/null || true
fi
"""
READ_COMMAND = "sh -c " + shlex.quote(_READ)  # as root (kthw.ssh.as_root)


@dataclass
class HostCerts:
    """What one node holds: {path: certificates}, {path: mtime}, {unit: start time}."""

    trust: dict[str, list[x509.Certificate]] = field(default_factory=dict)  # CA bundles
    leaves: dict[str, x509.Certificate] = field(default_factory=dict)  # certificates it presents
    mtimes: dict[str, int] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)


def parse_host(text: str) -> HostCerts:
    """Read the output of :data:`READ_COMMAND`."""
    host = HostCerts()
    for header, body in re.findall(r"^==> (.*)\n((?:(?!==> ).*\n?)*)", text, re.M):
        kind, _, rest = header.partition(" ")
        if kind == "unit":
            unit, _, started = rest.partition(" ")
            host.started[unit] = int(started)
        elif kind == "configmap":
            if "BEGIN CERTIFICATE" in body:
                host.trust[rest] = x509.load_pem_x509_certificates(body.encode())
        elif kind == "file":
            path, _, mtime = rest.rpartition(" ")
            host.mtimes[path] = int(mtime)
            name = os.path.basename(path)
            if path.endswith(".crt"):
                certs = x509.load_pem_x509_certificates(body.encode())
                if name in TRUST_FILES:
                    host.trust[path] = certs
                else:
                    host.leaves[path] = certs[0]
            else:
                for line in body.splitlines():
                    key, _, value = line.strip().partition(":")
                    pem = base64.b64decode(value.strip())
                    if key == "certificate-authority-data":
                        host.trust[path] = x509.load_pem_x509_certificates(pem)
                    elif key == "client-certificate-data":
                        host.leaves[path] = x509.load_pem_x509_certificates(pem)[0]
    return host


def owed_restarts(host: HostCerts) -> list[str]:
    """Services that started before a certificate file they read was last written."""
    owed = []
    for unit, prefixes in READS.items():
        if unit not in host.started:
            continue
        newer = [p for p, m in host.mtimes.items() if p.startswith(prefixes) and m > host.started[unit]]
        if newer:
            owed.append(f"{unit} has not restarted since {newer[0]} changed")
    return owed


Reader = Callable[[], dict[str, HostCerts]]


def ssh_reader(cluster: Cluster) -> Reader:
    """Read every node that holds certificates (masters, workers, an etcd-only member), all of them up."""
    from kthw.inventory import InventoryError, connections
    from kthw.ssh import SshError, as_root, ssh_run

    def read() -> dict[str, HostCerts]:
        names = [n.name for n in cluster.nodes if n.holds_certificates]
        try:
            conns = connections(cluster, limit=names)
        except InventoryError as exc:
            raise PkiError(str(exc)) from None
        if missing := [n for n in names if n not in conns]:
            raise PkiError(f"{', '.join(missing)} not reachable: every node must be read (a report or a rotation "
                           "step that skipped one would be wrong). Fix: start it, or remove it from the cluster "
                           "file first.")
        try:  # in parallel: one SSH round trip per node, all at once
            with ThreadPoolExecutor(len(names)) as pool:
                answers = pool.map(lambda n: ssh_run(n, conns[n], as_root(conns[n], READ_COMMAND)).decode(), names)
                return {n: parse_host(text) for n, text in zip(names, answers, strict=True)}
        except SshError as exc:
            raise PkiError(f"reading certificates failed: {exc}") from None
    return read
