"""Shell command lines the operations and the facts share, defined once: how to reach etcd
and the local apiserver on a master, and the one readiness loop."""

from __future__ import annotations

import shlex

# etcd, over TLS with etcd's own CA, from a master (the member's certificate is also a client one).
ETCD_DIR = "/etc/etcd"
ETCDCTL = (f"ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert={ETCD_DIR}/etcd-ca.crt "
           f"--cert={ETCD_DIR}/etcd-server.crt --key={ETCD_DIR}/etcd-server.key")
ETCD_HEALTHY = f"{ETCDCTL} endpoint health >/dev/null 2>&1"

# The master's own apiserver, as admin (kubectl on the master, never through the load balancer).
ADMIN_KUBECONFIG = "/etc/kubernetes/admin.kubeconfig"
KUBECTL = f"kubectl --kubeconfig {ADMIN_KUBECONFIG}"
APISERVER_READY = f"{KUBECTL} get --raw /readyz >/dev/null 2>&1"


def wait_until(condition: str, what: str, tries: int = 90, delay: int = 2, on_failure: str = "") -> str:
    """A shell loop that waits until ``condition`` holds (``tries`` x ``delay`` seconds), else runs
    ``on_failure`` (to show why), says "<what> not ready" and fails.

    >>> wait_until("true", "etcd", tries=3)
    "for i in $(seq 3); do true && exit 0; sleep 2; done; echo 'etcd not ready' >&2; exit 1"
    """
    tail = f"{on_failure}; " if on_failure else ""
    return (f"for i in $(seq {tries}); do {condition} && exit 0; sleep {delay}; done; "
            f"{tail}echo {shlex.quote(what + ' not ready')} >&2; exit 1")
