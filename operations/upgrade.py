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

Only the hosts a turn concerns walk it: the first master for a node it drains or left drained
(by the Node objects in its snapshot, and only for nodes in this run), and the node itself when
it owes restarts. The turn's two barriers are shared by exactly those hosts, so a node restarts
after its drain and the first master's next drain waits for the uncordon; a converged cluster
walks no turn at all, and no host plans operations for other nodes' turns (the plan stays linear
in the cluster's size). Etcd and the control plane were upgraded before, member by member and
master by master (``operations/etcd.py``, ``operations/control_plane.py``); kthw/upgrade.py says
what the skew check refuses.
"""

from __future__ import annotations

from contextlib import contextmanager

from pyinfra import host
from pyinfra.operations import server

from kthw.context import HostContext
from kthw.ops import command_when
from kthw.preflight import nodes_in_run
from kthw.upgrade import drain, uncordon, wants_drain
from operations import node as node_component


@contextmanager
def turn_of(index: int):
    """Operations inside belong to the turn of the node at ``index`` in the cluster's order.

    pyinfra identifies an operation by its call site plus the loop position (``host.loop``); a
    host that walks only some turns sets the position to the node's place in the whole cluster,
    so the same turn is the same operation on every host that walks it."""
    host.loop_position.append(index)
    try:
        yield
    finally:
        host.loop_position.pop()


def first_master_turns(ctx: HostContext, kubernetes: str, containerd: str) -> dict[str, bool]:
    """{node: drain first?} for the nodes the first master drains now or left drained, in this run."""
    if not ctx.is_first_master:
        return {}
    statuses = ctx.snapshot.query("node_status") or {}
    in_run = nodes_in_run()
    turns = {}
    for name, status in statuses.items():
        # A Node that is not Ready (a stopped kubelet) is not drained: its pods are no longer served.
        drain = bool(status["ready"]) and wants_drain(status, kubernetes, containerd)
        if name in in_run and (drain or status["drained"]):
            turns[name] = drain
    return turns


def deploy(ctx: HostContext, owed: list[node_component.Restart]) -> None:
    """Walk the turns this host takes part in. ``owed``: this host's own restarts (``node.deploy``)."""
    c = ctx.cluster
    kubernetes, containerd = str(c.versions.kubernetes), str(c.versions.containerd)
    drains = first_master_turns(ctx, kubernetes, containerd)
    for index, n in enumerate(c.kubelet_nodes):
        mine = n == ctx.node and bool(owed)
        if n.name not in drains and not mine:
            continue
        with turn_of(index):
            if n.name in drains:
                command_when(drain(n.name), always=drains[n.name], name=f"upgrade | {n.name} drained")
            server.shell(name=f"--- barrier: {n.name}'s turn ---", commands=[])
            if mine:
                node_component.restarted_in_turn(ctx, owed)
            server.shell(name=f"--- barrier: {n.name} restarted ---", commands=[])
            if n.name in drains:
                command_when(uncordon(n.name, kubernetes), always=True,
                             name=f"upgrade | {n.name} Ready on {kubernetes} and uncordoned")
