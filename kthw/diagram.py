"""A Mermaid picture of the topology, drawn from the cluster model (README embeds it)."""

from __future__ import annotations

from kthw.model import API_PORT, NODE_API_PORT, Cluster


def mermaid(cluster: Cluster) -> str:
    lb = cluster.loadbalancer
    etcd_here = "<br/>etcd (member only)" if lb.etcd else ""
    lines = [
        "flowchart TB",
        f'  op(["operator: kubectl / pyinfra"]) -->|"https :{API_PORT}"| {_id(lb.name)}',
        f'  {_id(lb.name)}["{lb.name}<br/>{lb.ip}<br/>HAProxy :{API_PORT}{etcd_here}"]',
        f'  subgraph cp["control plane ({len(cluster.masters)} masters, etcd over TLS)"]',
    ]
    for m in cluster.masters:
        lines.append(f'    {_id(m.name)}["{m.name}<br/>{m.ip}<br/>etcd, kube-apiserver,<br/>'
                     f'controller-manager, scheduler<br/>kubelet (tainted), kube-proxy,<br/>'
                     f'HAProxy 127.0.0.1:{NODE_API_PORT}"]')
    lines.append("  end")
    lines.append(f'  subgraph wk["workers (pods {cluster.pod_network}, {cluster.cni} CNI)"]')
    for w in cluster.workers:
        lines.append(f'    {_id(w.name)}["{w.name}<br/>{w.ip}<br/>containerd, kubelet, kube-proxy,<br/>'
                     f'HAProxy 127.0.0.1:{NODE_API_PORT}<br/>pods {w.pod_cidr}"]')
    lines.append("  end")
    for m in cluster.masters:
        lines.append(f"  {_id(lb.name)} --> {_id(m.name)}")
    # every node's kubelet and kube-proxy reach the apiservers through their own local HAProxy
    lines.append("  wk -.->|kubelet, kube-proxy: local HAProxy to every apiserver| cp")
    if cluster.workers and cluster.masters:
        lines.append(f"  cp <-.->|pod network ({cluster.cni})| wk")
    members = cluster.etcd_members
    for a, b in zip(members, members[1:], strict=False):
        lines.append(f"  {_id(a.name)} <-->|etcd peers :2380| {_id(b.name)}")
    return "\n".join(lines) + "\n"


def _id(name: str) -> str:
    return name.replace("-", "_")
