"""HostState snapshots for the @fake plan tests: a fresh machine and a converged one."""

from __future__ import annotations

import operations
from kthw.context import NEUTRAL_FACTS, HostContext, prepared_cluster
from kthw.deploy import collect
from kthw.model import Cluster, Node
from operations import addons, base, control_plane, etcd, loadbalancer, worker

MODULES = [base, etcd, control_plane, loadbalancer, worker, addons]
assert operations  # the package, imported for its modules


def fresh_state() -> dict:
    return {"files": {}, "dirs": {}, "services": {}, "sysctls": {}, "packages": {}, "manifests": {},
            "images": [], "swap": ["/swap.img"], "fstab_swap": ["/swap.img none swap sw 0 0"],
            "overlay": True, "br_netfilter": True, "hostname": "ubuntu-jammy",
            "etc_hostname": "ubuntu-jammy", "resolved": True, "cgroup": "v2", "container": "", "sys_resource": True}


def converged_state(cluster: Cluster, node: Node) -> dict:
    """What the host looks like after a successful deploy."""
    cluster = prepared_cluster(str(cluster.source))
    facts = {**NEUTRAL_FACTS, "resolved": True}
    ctx = HostContext(cluster, cluster.node(node.name), facts)
    wants = collect(ctx, MODULES)
    state = fresh_state()
    state.update(swap=[], fstab_swap=[], hostname=node.name, etc_hostname=node.name)
    for w in wants.values():
        for f in w.all_files():
            state["files"][f.dest] = [f.sha256, f.mode, f.owner]
        for d in w.dirs:
            state["dirs"][d.path] = [d.mode, d.owner]
        for s in w.services:
            state["services"][s] = ["active", "enabled"]
        state["sysctls"].update(w.sysctls)
        state["packages"].update({p: True for p in w.packages})
        state["manifests"].update({m: "present" for m in w.manifests})
        state["images"] += w.images
    return state
