"""Every component's settings as data: the deploy's defaults, each beside why, merged with the
user's ``extra_args`` from cluster.yaml, rendered in one place.

- Command-line components (etcd and the control plane): a mapping flag -> value, in the order
  they appear on the command line (``True``: a flag without value, like ``--client-cert-auth``).
  A user value replaces the default where it stands, a new flag comes after the defaults, and
  ``null`` removes a default::

      extra_args:
        kube_apiserver: {v: 2, event-ttl: 2h, enable-aggregator-routing: null}

- Config-file components (the kubelet, kube-proxy): the user's keys are merged into the rendered
  configuration (a mapping key by key, ``null`` removes a key)::

      extra_args:
        kubelet: {maxPods: 50, evictionHard: {memory.available: 200Mi}}

The unit templates (files/etc/systemd/system/*.service.j2) render :func:`command_line`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import yaml

from kthw import paths
from kthw.pki import ETCD_MEMBER_CN

if TYPE_CHECKING:
    from kthw.model import Cluster, Node

# TLS for every component that serves (apiserver, controller-manager, scheduler, kubelet, etcd),
# as the CIS Kubernetes Benchmark asks: TLS 1.2 at least and, for 1.2, only AEAD suites with
# forward secrecy (TLS 1.3's suites are fixed by Go). Both key types of pki.key_type covered.
TLS_CIPHER_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
)
SUITES = ",".join(TLS_CIPHER_SUITES)

Flags = dict[str, Any]


def etcd(c: Cluster, n: Node) -> Flags:
    d = paths.ETCD_DIR
    return {
        "name": n.name,
        "data-dir": paths.ETCD_DATA,
        # clients and peers: TLS both ways, with etcd's own CA (not the cluster's)
        "cert-file": f"{d}/etcd-server.crt", "key-file": f"{d}/etcd-server.key",
        "trusted-ca-file": paths.ETCD_CA, "client-cert-auth": True,
        "peer-cert-file": f"{d}/etcd-server.crt", "peer-key-file": f"{d}/etcd-server.key",
        "peer-trusted-ca-file": paths.ETCD_CA, "peer-client-cert-auth": True,
        "peer-cert-allowed-cn": ETCD_MEMBER_CN,  # only the members' own certificates peer
        "tls-min-version": "TLS1.2", "cipher-suites": SUITES,
        "listen-client-urls": f"https://{n.ip}:2379,https://127.0.0.1:2379",
        "advertise-client-urls": f"https://{n.ip}:2379",
        "listen-peer-urls": f"https://{n.ip}:2380",
        "initial-advertise-peer-urls": f"https://{n.ip}:2380",
        "initial-cluster": c.etcd_initial_cluster,
        "initial-cluster-token": c.name,
    }


def kube_apiserver(c: Cluster, n: Node) -> Flags:
    return {**_apiserver_serving(n), **_apiserver_clients(c), **_apiserver_aggregation(),
            **_apiserver_audit(c), "v": 1}


def _apiserver_serving(n: Node) -> Flags:
    pki = paths.K8S_PKI
    return {
        "advertise-address": n.ip,
        "bind-address": "0.0.0.0",
        "secure-port": 6443,
        "tls-min-version": "VersionTLS12", "tls-cipher-suites": SUITES,
        # anonymous requests only to the health endpoints (the file says so)
        "authentication-config": f"{paths.ETC_K8S}/authentication-config.yaml",
        "profiling": "false",  # CIS: no /debug/pprof
        "allow-privileged": "true",  # the CNI's and kube-proxy's pods need it
        "authorization-mode": "Node,RBAC",
        "enable-admission-plugins": "NodeRestriction",  # a kubelet edits only its own Node and pods
        # Pod Security's default levels (cluster.yaml: pod_security), kube-system exempt
        "admission-control-config-file": f"{paths.ETC_K8S}/admission-config.yaml",
        "client-ca-file": f"{pki}/ca.crt",
        "tls-cert-file": f"{pki}/kube-apiserver.crt", "tls-private-key-file": f"{pki}/kube-apiserver.key",
    }


def _apiserver_clients(c: Cluster) -> Flags:
    """What the apiserver talks to: etcd, the encryption config, the kubelets."""
    pki = paths.K8S_PKI
    return {
        "etcd-servers": c.etcd_servers,
        "etcd-cafile": f"{pki}/etcd-ca.crt",
        "etcd-certfile": f"{pki}/apiserver-etcd-client.crt", "etcd-keyfile": f"{pki}/apiserver-etcd-client.key",
        "encryption-provider-config": paths.ENCRYPTION_CONFIG,  # Secrets encrypted at rest
        # the apiserver checks the kubelet's serving certificate, and authenticates to it
        "kubelet-certificate-authority": f"{pki}/ca.crt",
        "kubelet-client-certificate": f"{pki}/apiserver-kubelet-client.crt",
        "kubelet-client-key": f"{pki}/apiserver-kubelet-client.key",
        "kubelet-preferred-address-types": "InternalIP,Hostname",
    }


def _apiserver_aggregation() -> Flags:
    """The aggregation layer (metrics-server and other extension apiservers), with its own CA."""
    pki = paths.K8S_PKI
    return {
        "requestheader-client-ca-file": f"{pki}/front-proxy-ca.crt",
        "requestheader-allowed-names": "front-proxy-client",
        "requestheader-username-headers": "X-Remote-User",
        "requestheader-group-headers": "X-Remote-Group",
        "requestheader-extra-headers-prefix": "X-Remote-Extra-",
        "proxy-client-cert-file": f"{pki}/front-proxy-client.crt",
        "proxy-client-key-file": f"{pki}/front-proxy-client.key",
        "enable-aggregator-routing": "true",  # masters reach extension apiservers' pods directly
    }


def _apiserver_audit(c: Cluster) -> Flags:
    """Service accounts, services, the audit log, and how it stops."""
    pki = paths.K8S_PKI
    return {
        "service-account-issuer": c.service_account_issuer,
        "service-account-key-file": f"{pki}/service-account.pub",
        "service-account-signing-key-file": f"{pki}/service-account.key",
        "api-audiences": c.service_account_issuer,
        "service-cluster-ip-range": c.service_network,
        "service-node-port-range": "30000-32767",
        "audit-policy-file": f"{paths.ETC_K8S}/audit-policy.yaml",
        "audit-log-path": f"{paths.K8S_LOG_DIR}/audit.log",
        "audit-log-maxage": 30, "audit-log-maxbackup": 3, "audit-log-maxsize": 100,
        "event-ttl": "1h",
        # on stop: keep serving 5 s while HAProxy's checks take this master out, and tell
        # clients to retry elsewhere (failover without failed requests)
        "shutdown-delay-duration": "5s", "shutdown-send-retry-after": "true",
    }


def _leader_elected(kubeconfig: str) -> Flags:
    """What the controller-manager and the scheduler share: their kubeconfig for everything,
    serving on loopback only, TLS as everywhere, no profiling, leader election across masters."""
    return {
        "kubeconfig": kubeconfig, "authentication-kubeconfig": kubeconfig, "authorization-kubeconfig": kubeconfig,
        "bind-address": "127.0.0.1",
        "tls-min-version": "VersionTLS12", "tls-cipher-suites": SUITES,
        "profiling": "false",
        "leader-elect": "true",
    }


def kube_controller_manager(c: Cluster, n: Node) -> Flags:
    pki = paths.K8S_PKI
    return {
        **_leader_elected(paths.CONTROLLER_MANAGER_KUBECONFIG),
        "cluster-name": c.name,
        "cluster-cidr": c.pod_network,
        "allocate-node-cidrs": "false",  # each node's pod subnet comes from the model (kubelet podCIDR)
        "service-cluster-ip-range": c.service_network,
        # signs approved CSRs with the signing CA alone (ca.crt is a bundle during a CA rotation)
        "cluster-signing-cert-file": f"{pki}/ca-signing.crt", "cluster-signing-key-file": f"{pki}/ca.key",
        "client-ca-file": f"{pki}/ca.crt",
        "root-ca-file": f"{pki}/ca.crt",
        "service-account-private-key-file": f"{pki}/service-account.key",
        "use-service-account-credentials": "true",  # each controller with its own identity
        "v": 1,
    }


def kube_scheduler(c: Cluster, n: Node) -> Flags:
    return {**_leader_elected(paths.SCHEDULER_KUBECONFIG), "v": 1}


COMMAND_LINES: dict[str, Callable[[Cluster, Node], Flags]] = {
    "etcd": etcd, "kube-apiserver": kube_apiserver, "kube-controller-manager": kube_controller_manager,
    "kube-scheduler": kube_scheduler,
}
CONFIG_FILES = ("kubelet", "kube-proxy")  # extra_args merged into their YAML configuration


def user_args(c: Cluster, component: str) -> Mapping[str, Any]:
    return getattr(c.extra_args, component.replace("-", "_"))


def merged(defaults: Flags, user: Mapping[str, Any]) -> Flags:
    """The defaults with the user's values: replaced in place, added after, removed by None."""
    out = {**defaults, **user}
    return {k: v for k, v in out.items() if v is not None}


def command_line(c: Cluster, n: Node, component: str) -> list[str]:
    """``--flag=value`` (``--flag`` for True) for each flag of ``component`` on node ``n``."""
    flags = merged(COMMAND_LINES[component](c, n), user_args(c, component))
    return [f"--{k}" if v is True else f"--{k}={v}" for k, v in flags.items()]


def merged_config(text: str, user: Mapping[str, Any]) -> str:
    """A rendered YAML configuration with the user's keys merged in (mappings key by key, None
    removes); ``text`` itself, byte for byte, when there is nothing to merge."""
    if not user:
        return text
    first = text.split("\n", 1)[0]
    header = f"{first}\n" if first.startswith("#") else ""  # "# Managed by kthw-pyinfra ..."
    return header + yaml.safe_dump(_deep_merge(yaml.safe_load(text), user), sort_keys=False)


def _deep_merge(base: Any, user: Mapping[str, Any]) -> Any:
    out = dict(base or {})
    for key, value in user.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def removal_problems(c: Cluster) -> list[tuple[str, str]]:
    """(key, flag) for every ``null`` in extra_args that removes no default of this cluster."""
    node = c.masters[0]
    found = []
    for component, defaults in COMMAND_LINES.items():
        names = defaults(c, node)
        for flag, value in user_args(c, component).items():
            if value is None and flag not in names:
                found.append((f"extra_args.{component.replace('-', '_')}.{flag}", flag))
    return found
