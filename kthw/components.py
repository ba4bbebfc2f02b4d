"""What each component is, in one record: which roles run it, its systemd units, the artifacts
it installs, the folders and files it places, its data, and the certificate files each of its
services reads. Everything else is derived from these records: which components a role runs
(operations/__init__.py), which binaries a role receives (kthw/artifacts.py), what reset.py
removes (kthw/reset.py), which restarts a certificate change owes (kthw/hostcerts.py).

How a component is deployed (its files' contents, its operations) lives in its module under
operations/; adding a component means one record here, one module there, and its templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kthw import paths

ROLES = ("loadbalancer", "master", "worker")
FIRST_MASTER = "first master"  # a pseudo-role: cluster-level objects are applied once, from there
ETCD_MEMBER = "etcd member"  # a pseudo-role: every master, and a load balancer given `etcd: true`


@dataclass(frozen=True, eq=False)  # one object per component: compared and hashed by identity
class Component:
    name: str
    roles: frozenset[str]
    units: tuple[str, ...] = ()  # services whose unit files we write, in start order
    package_units: tuple[str, ...] = ()  # services an OS package provides (reset stops them, keeps the unit)
    artifacts: tuple[str, ...] = ()  # kthw/artifacts.py CATALOGUE names it installs
    folders: tuple[str, ...] = ()  # folders it places (reset removes them, with what is inside)
    files: tuple[str, ...] = ()  # files it places outside those folders
    data: tuple[str, ...] = ()  # what its services make at run time (reset removes it; globs allowed)
    kept: tuple[str, ...] = ()  # what it places that reset leaves, on purpose
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # unit -> certificate files/folders
    # roles whose nodes may hold it from a former deploy without running it now (an option turned
    # off): there its module's retired_wants()/deploy() find and remove what is left
    retired_on: frozenset[str] = frozenset()

    def unit_files(self) -> tuple[str, ...]:
        return tuple(paths.unit_file(u) for u in self.units)


BASE = Component(
    "base", frozenset(ROLES),
    files=(paths.MODULES_CONF, paths.SYSCTL_CONF),  # (Kubernetes nodes only)
    data=(paths.KTHW_DIR,),  # the deploy's own bookkeeping: hash cache, applied marks, images
    # the machine keeps its name and its hosts file (they were set before anything of ours ran);
    # the live sysctl values stay until a reboot
    kept=(paths.HOSTNAME, paths.HOSTS),
)
# HAProxy in front of every apiserver: on the load balancer (the operator's entrance) and on
# every Kubernetes node's loopback (its kubelet's and kube-proxy's way to the API).
APISERVER_PROXY = Component(
    "apiserver proxy", frozenset(ROLES),
    package_units=("haproxy",),  # Debian's package (left installed: it may have been there before)
    files=(paths.HAPROXY_CFG,),
)
# keepalived on two load balancers: the virtual IP of network.api_vip follows a working HAProxy
# (on a load balancer without one it only makes sure a former deploy's keepalived is gone).
KEEPALIVED = Component(
    "keepalived", frozenset({"loadbalancer"}),
    package_units=("keepalived",),
    files=(paths.KEEPALIVED_CONF,),
)
ETCD = Component(
    "etcd", frozenset({ETCD_MEMBER}), retired_on=frozenset({"loadbalancer"}),  # `etcd: true` dropped
    units=("etcd",), artifacts=("etcd",),
    folders=(paths.ETCD_DIR,),
    data=(paths.ETCD_DATA, f"{paths.ETCD_RESTORE_ASIDE}*"),
    reads={"etcd": (f"{paths.ETCD_DIR}/",)},
)
CONTROL_PLANE = Component(
    "control plane", frozenset({"master"}),
    units=("kube-apiserver", "kube-controller-manager", "kube-scheduler"),
    artifacts=("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
    folders=(paths.K8S_DIR, paths.ETC_K8S, paths.K8S_LOG_DIR),
    reads={
        "kube-apiserver": (f"{paths.K8S_PKI}/",),
        "kube-controller-manager": (f"{paths.K8S_PKI}/", paths.CONTROLLER_MANAGER_KUBECONFIG),
        "kube-scheduler": (paths.SCHEDULER_KUBECONFIG,),
    },
)
# A systemd timer on every master takes an etcd snapshot into a root-only folder, in backup.py's
# format, and keeps the newest backup.keep (backup.scheduled: false stops and removes the timer; the
# snapshots taken stay until reset). Masters, not every etcd member: the encryption config the
# snapshot's Secrets need, kept beside each snapshot, is on the masters only.
ETCD_SNAPSHOTS = Component(
    "etcd snapshots", frozenset({"master"}),
    units=("kthw-etcd-snapshot", "kthw-etcd-snapshot.timer"),  # the timer starts the oneshot service
    folders=(paths.ETCD_SNAPSHOTS,),
    files=(paths.ETCD_SNAPSHOT_SCRIPT,),
    data=(f"{paths.TIMER_STAMPS}/stamp-kthw-etcd-snapshot.timer",),  # systemd's record of the last run
)
NODE = Component(
    "node", frozenset({"master", "worker"}),  # masters are Kubernetes nodes too (tainted)
    units=("containerd", "kubelet", "kube-proxy", "kthw-pod-network"),  # the last: bridge CNI only
    artifacts=("containerd", "runc", "cni-plugins", "crictl", "kubelet", "kube-proxy"),
    folders=(paths.CONTAINERD_DIR, paths.CNI_DIR, paths.CNI_ETC, paths.K8S_DIR, paths.KUBELET_DIR,
             paths.KUBE_PROXY_DIR),
    files=(paths.CRICTL_CONF,),
    data=(paths.CONTAINERD_STATE, paths.CONTAINERD_RUN, paths.CNI_STATE, paths.WEAVE_DATA),
    reads={
        "kubelet": (f"{paths.KUBELET_PKI}/", paths.KUBELET_KUBECONFIG, paths.CLUSTER_CA),
        "kube-proxy": (paths.KUBE_PROXY_KUBECONFIG,),
    },
)
ADDONS = Component(
    "addons", frozenset({FIRST_MASTER}),
    folders=(paths.ADDONS_DIR,),
)

# In the order they run on a host.
ALL = (BASE, ETCD, CONTROL_PLANE, ETCD_SNAPSHOTS, APISERVER_PROXY, KEEPALIVED, NODE, ADDONS)


def roles_of(node, first_master: bool = False) -> frozenset[str]:
    """A node's role (kthw.model.Node) with the pseudo-roles it takes on.

    >>> from kthw.model import load_cluster
    >>> sorted(roles_of(load_cluster("cluster.yaml").masters[0]))
    ['etcd member', 'master']
    """
    return frozenset({node.role, *([ETCD_MEMBER] if node.runs_etcd else []),
                      *([FIRST_MASTER] if first_master else [])})


def for_node(node, first_master: bool = False) -> tuple[Component, ...]:
    """The components ``node`` runs, in order."""
    roles = roles_of(node, first_master)
    return tuple(c for c in ALL if c.roles & roles)


def roles_installing(artifact: str) -> frozenset[str]:
    """The roles and pseudo-roles whose nodes receive ``artifact`` (those of every component
    installing it)."""
    return frozenset(r for c in ALL if artifact in c.artifacts for r in c.roles)


def all_units() -> tuple[str, ...]:
    """Every service a component runs, ours and the packages' (HAProxy, keepalived), once each."""
    return tuple(dict.fromkeys(u for c in ALL for u in (*c.units, *c.package_units)))


def certificate_reads() -> dict[str, tuple[str, ...]]:
    """unit -> the certificate files and folders it reads (a newer file means a restart is owed)."""
    return {unit: files for c in ALL for unit, files in c.reads.items()}
