"""HostState snapshots for the @fake plan tests: what the real snapshot script would report for
a fresh machine, a converged one, and converged ones that drifted."""

from __future__ import annotations

from kthw.context import NEUTRAL_FACTS, HostContext, prepared_cluster
from kthw.model import Cluster, Node, pod_subnets, pod_subnets_text
from kthw.paths import POD_SUBNETS_RECORD
from operations.plan import collect, snapshot_spec

# Files that drift in the "drifted" state: several in one operation (etcd's certificates, the
# control plane's), contents, modes and owners, secrets and not.
DRIFT = {
    "master-1": {
        "/etc/etcd/etcd-ca.crt": "owner", "/etc/etcd/etcd-server.crt": "content",
        "/etc/etcd/etcd-server.key": "content", "/var/lib/kubernetes/pki/ca.crt": "mode",
        "/var/lib/kubernetes/pki/kube-apiserver.key": "mode",
        "/var/lib/kubernetes/pki/service-account.pub": "owner", "/etc/hosts": "content",
    },
    "worker-2": {"/var/lib/kubelet/kubeconfig": "content", "/var/lib/kubelet/pki/kubelet.key": "content",
                 "/etc/containerd/config.toml": "mode"},
}


# What every fake host answers besides the neutral facts: the node's address is on eth1.
HOST_FACTS = {"resolved": True, "interface_of": "eth1"}


def _wants(cluster: Cluster, node: Node):
    cluster = prepared_cluster(str(cluster.source))
    ctx = HostContext(cluster, cluster.node(node.name), {**NEUTRAL_FACTS, **HOST_FACTS})
    return collect(ctx)


def fresh_state(cluster: Cluster, node: Node) -> dict:
    """A machine nothing has touched: every path asked for is reported absent, as the real
    snapshot script does."""
    spec = snapshot_spec(_wants(cluster, node))
    return {"files": dict.fromkeys(spec["files"]), "dirs": dict.fromkeys(spec["dirs"]),
            "services": {s: ["inactive", ""] for s in spec["services"]},
            "sysctls": dict.fromkeys(spec["sysctls"], "0"), "packages": dict.fromkeys(spec["packages"], False),
            "manifests": dict.fromkeys(spec["manifests"], "missing"), "images": [],
            "control_plane_labelled": [], "managed_registry_hosts": [], "interface_of": HOST_FACTS["interface_of"],
            "swap": ["/swap.img"], "fstab_swap": ["/swap.img none swap sw 0 0"],
            "overlay": True, "br_netfilter": True, "hostname": "ubuntu-jammy",
            "etc_hostname": "ubuntu-jammy", "resolved": True, "cgroup": "v2", "container": "", "sys_resource": True}


def converged_state(cluster: Cluster, node: Node) -> dict:
    """What the host looks like after a successful deploy."""
    state = fresh_state(cluster, node)
    state.update(swap=[], fstab_swap=[], hostname=node.name, etc_hostname=node.name,
                 control_plane_labelled=[m.name for m in cluster.masters],
                 managed_registry_hosts=sorted(cluster.artifacts.registry_mirrors) if node.runs_kubelet else [])
    for w in _wants(cluster, node).values():
        for f in w.all_files():
            state["files"][f.dest] = [f.sha256, f.mode, f.owner]
        for d in w.dirs:
            state["dirs"][d.path] = [d.mode, d.owner]
        for s in w.services:
            state["services"][s] = ["active", "enabled"]
        state["sysctls"].update(w.sysctls)
        state["packages"].update({p: True for p in w.all_packages()})
        state["manifests"].update({m: "present" for m in w.manifests})
        state["images"] += w.images
    # every kubelet registered and Ready, on the versions this model pins (only the first master
    # asks: the real snapshot reports {} elsewhere)
    state["node_status"] = {} if node != cluster.masters[0] else {n.name: {"kubelet": str(cluster.versions.kubernetes),
                                     "runtime": "containerd://" + str(cluster.versions.containerd).lstrip("v"),
                                     "ready": True, "unschedulable": False, "drained": False}
                            for n in cluster.kubelet_nodes}
    state["etcd_data"] = node.runs_etcd  # every member has joined and holds data
    # a healthy member's database: 40 MiB, 5 of them free pages (below etcd.defrag_free_mib)
    state["etcd_status"] = {"db_size": 40 << 20, "in_use": 35 << 20, "alarms": []} if node.runs_etcd else None
    # every master keeps the record of the nodes' pod subnets the deploy wrote
    state["text_of"] = {POD_SUBNETS_RECORD: pod_subnets_text(pod_subnets(cluster))} if node.is_master else {}
    state["etcd_members"] = [[f"{i + 1:x}", m.name, [f"https://{m.ip}:2380"], [f"https://{m.ip}:2379"]]
                             for i, m in enumerate(cluster.etcd_members)]
    return state


def drifted_state(cluster: Cluster, node: Node) -> dict:
    """Converged, except the files in DRIFT (content, mode or owner)."""
    state = converged_state(cluster, node)
    for path, what in DRIFT.get(node.name, {}).items():
        sha, mode, owner = state["files"][path]
        if what == "content":
            sha = "0" * 64
        elif what == "mode":
            mode = 0o666
        else:
            owner = "nobody:nogroup"
        state["files"][path] = [sha, mode, owner]
    return state


# Placed by a run that stopped before restarting (or applying) what they feed: for each host,
# (file, the service or add-on it feeds).
INTERRUPTED = {
    "master-1": [("/etc/etcd/etcd-server.crt", "etcd"),
                 ("/etc/kubernetes/addons/20-coredns.yaml", "addon-20-coredns.yaml")],
    "worker-1": [("/var/lib/kubelet/kubelet-config.yaml", "kubelet")],
}


def interrupted_state(cluster: Cluster, node: Node) -> dict:
    """Converged files, but the services and add-ons in INTERRUPTED last (re)started or were
    applied before their file landed; worker-1's kubelet unit also awaits a daemon-reload."""
    state = converged_state(cluster, node)
    state.update(mtimes={p: 1000.0 for p in state["files"] if state["files"][p]},
                 started={s: 2000.0 for s in state["services"]},
                 applied={k: 2000.0 for k in [*state["services"],
                                               *(f"addon-{m.rsplit('/', 1)[1]}" for m in state["manifests"])]},
                 need_reload={})
    for path, _fed in INTERRUPTED.get(node.name, []):
        state["mtimes"][path] = 3000.0
    if node.name == "worker-1":
        state["need_reload"]["kubelet"] = True
    return state
