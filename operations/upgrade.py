"""Rolling node upgrades: one Kubernetes node at a time (masters first, then workers), in the
order of the cluster file.

For each node, in turn:

1. first master  drains it, if its Node reports another kubelet or containerd version than the
                 cluster file asks for (marked ``kthw.io/drained-for-upgrade`` first);
   -- barrier --
2. the node      restarts containerd, the kubelet and kube-proxy on their new binaries (only a
                 node whose binaries changed: :func:`operations.node.upgrading`);
   -- barrier --
3. first master  waits until the node is Ready on the new version, then uncordons it (also what
                 an interrupted run left drained, by the mark).

Every host that runs a kubelet walks the same turns (the barriers are shared operations), so a
node restarts only after its drain and the next drain waits for the uncordon. A node that is not
upgraded does nothing in its turn; a converged cluster costs no command. Etcd and the control
plane were upgraded before, member by member and master by master (``operations/etcd.py``,
``operations/control_plane.py``); kthw/upgrade.py says what the skew check refuses.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import server

from kthw.context import HostContext
from kthw.ops import command_when
from kthw.upgrade import drain, uncordon, wants_drain
from operations import node as node_component


def deploy(ctx: HostContext, owed: list[node_component.Restart]) -> None:
    """Walk every node's turn. ``owed``: this host's own restarts (from ``node.deploy``)."""
    c = ctx.cluster
    kubernetes, containerd = str(c.versions.kubernetes), str(c.versions.containerd)
    statuses = (ctx.snapshot.query("node_status") or {}) if ctx.is_first_master else {}
    for n in host.loop(c.kubelet_nodes):
        status = statuses.get(n.name)
        # A Node that is not Ready (a stopped kubelet) is not drained: its pods are no longer served.
        drained = bool(status) and status["ready"] and wants_drain(status, kubernetes, containerd)
        if ctx.is_first_master:
            command_when(drain(n.name), always=drained, name=f"upgrade | {n.name} drained")
        server.shell(name=f"--- barrier: {n.name}'s turn ---", commands=[])
        if n == ctx.node:
            node_component.restarted_in_turn(ctx, owed)
        server.shell(name=f"--- barrier: {n.name} restarted ---", commands=[])
        if ctx.is_first_master:
            command_when(uncordon(n.name, kubernetes), always=drained or bool(status and status["drained"]),
                         name=f"upgrade | {n.name} Ready on {kubernetes} and uncordoned")
