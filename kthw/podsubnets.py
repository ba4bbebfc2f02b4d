"""Each Kubernetes node's pod subnet: the default a node takes, and the record that keeps it there.

A node's subnet must not move while it runs (its routes and its pods' addresses depend on it), so the
deploy records every node's subnet (:func:`record_pod_subnets`, ``<state_dir>/pod-subnets.yaml``, a
copy on the masters) and :func:`default_pod_cidrs` gives a recorded node its recorded subnet back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from kthw.model import Cluster, ClusterFile

POD_SUBNETS = "pod-subnets.yaml"


def default_pod_cidrs(spec: ClusterFile, recorded: Mapping[str, IPv4Network] | None = None
                      ) -> list[IPv4Network | None]:
    """Each Kubernetes node's default pod subnet. A subnet the deploy recorded for the node
    (:func:`record_pod_subnets`) stays with it; any other node takes the first free slot of
    network.pods: workers from the first one up, masters from the last one down. So adding or
    removing a node never moves another node's subnet (its routes and running pods keep working)."""
    net = spec.network
    size = 2 ** (32 - net.pod_subnet_prefix)
    count = 2 ** (net.pod_subnet_prefix - net.pods.prefixlen)
    base = int(net.pods.network_address)
    slot = lambda i: IPv4Network((base + i * size, net.pod_subnet_prefix))  # noqa: E731
    kube = [n for n in spec.nodes if n.role in ("worker", "master")]
    # a record from another network.pods or prefix no longer fits: those nodes start over
    kept = {n.name: recorded[n.name] for n in kube if n.name in (recorded or {})
            and recorded[n.name].subnet_of(net.pods) and recorded[n.name].prefixlen == net.pod_subnet_prefix}
    taken = set(kept.values()) | {n.pod_cidr for n in kube if n.pod_cidr}
    free = {"worker": (slot(i) for i in range(count)), "master": (slot(i) for i in reversed(range(count)))}
    out: list[IPv4Network | None] = []
    for n in spec.nodes:  # by position in nodes[] for newcomers (names are checked elsewhere)
        if n.role not in free:
            out.append(None)
        elif n.name in kept:  # (a name given twice, an error reported elsewhere, keeps it once)
            out.append(kept.pop(n.name))
        else:
            choice = next((s for s in free[n.role] if s not in taken), slot(0))  # full: the count check says so
            taken.add(choice)
            out.append(choice)
    return out


def recorded_pod_subnets(state_dir: Path) -> dict[str, IPv4Network]:
    """{node: pod subnet} as the last deploy recorded them (empty before the first)."""
    try:
        raw = yaml.safe_load((state_dir / POD_SUBNETS).read_text()) or {}
        return {str(k): IPv4Network(v) for k, v in raw.items()}
    except (OSError, yaml.YAMLError, ValueError, TypeError, AttributeError):
        return {}


def pod_subnets(cluster: Cluster) -> dict[str, str]:
    """{node: pod subnet} of every Kubernetes node."""
    return {n.name: str(n.pod_cidr) for n in cluster.kubelet_nodes if n.pod_cidr}


def pod_subnets_text(subnets: Mapping[str, str]) -> str:
    """The record as the operator machine and the masters keep it (YAML, sorted)."""
    # (the comment names kthw/model.py as it always has: a changed text would differ from every
    # copy already on the masters)
    return ("# Pod subnet of each node, kept by the deploy (kthw/model.py record_pod_subnets).\n"
            + yaml.safe_dump(dict(subnets), sort_keys=True))


def moved_pod_subnets(held: str | None, cluster: Cluster) -> dict[str, tuple[str, str]]:
    """{node: (recorded, planned)} for every node whose recorded pod subnet (the text a master
    holds) differs from what ``cluster`` gives it; nodes new or gone do not count."""
    try:
        recorded = {str(k): str(v) for k, v in (yaml.safe_load(held or "") or {}).items()}
    except (yaml.YAMLError, AttributeError):
        return {}
    planned = pod_subnets(cluster)
    return {n: (recorded[n], planned[n]) for n in sorted(recorded) if n in planned and recorded[n] != planned[n]}


def record_pod_subnets(cluster: Cluster) -> None:
    """Remember every Kubernetes node's pod subnet (the deploy calls this), so the next model
    keeps them where they are whatever nodes come or go. Nodes gone from the file are dropped:
    their subnets are free again. The masters keep a copy (operations/control_plane.py), which
    ``kthw pki adopt`` brings back to another operator machine."""
    now = pod_subnets(cluster)
    if {k: str(v) for k, v in recorded_pod_subnets(cluster.state_dir).items()} == now:
        return
    write_pod_subnets(cluster.state_dir, pod_subnets_text(now))


def write_pod_subnets(state_dir: Path, text: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / POD_SUBNETS
    tmp = path.with_name(f".{POD_SUBNETS}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
