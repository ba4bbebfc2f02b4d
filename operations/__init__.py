"""The deploy, one module per component. Each has ``wants(ctx)`` (what the host must hold,
computed locally) and ``deploy(ctx, wants)`` (the operations, in the order a host lives them).

Which components a node runs is said here and nowhere else.
"""

from __future__ import annotations

from types import ModuleType

from operations import addons, base, control_plane, etcd, loadbalancer, node

# Each role's components, in the order they run on such a node.
ROLE_COMPONENTS: dict[str, tuple[ModuleType, ...]] = {
    "loadbalancer": (base, loadbalancer),
    # Masters are Kubernetes nodes too (tainted, see operations/node.py).
    "master": (base, etcd, control_plane, node),
    "worker": (base, node),
}
# Cluster-level objects (RBAC, CNI, CoreDNS) are applied once, from the first master.
FIRST_MASTER_COMPONENTS: tuple[ModuleType, ...] = (addons,)
ALL_COMPONENTS = (base, etcd, control_plane, loadbalancer, node, addons)


def components_for(role: str, first_master: bool = False) -> list[ModuleType]:
    """The components a node with this role runs, in order."""
    return [*ROLE_COMPONENTS[role], *(FIRST_MASTER_COMPONENTS if first_master else ())]
