"""The deploy, one module per component. Each has ``COMPONENT`` (its record in
kthw/components.py: roles, units, artifacts, folders), ``wants(ctx)`` (what the host must hold,
computed locally) and ``deploy(ctx, wants)`` (the operations, in the order a host lives them).

Which components a node runs is said by the records, and derived here.
"""

from __future__ import annotations

from types import ModuleType

from kthw import components
from operations import addons, apiserver_proxy, base, control_plane, etcd, keepalived, node, snapshots

MODULES: dict[components.Component, ModuleType] = {
    m.COMPONENT: m for m in (base, etcd, control_plane, snapshots, apiserver_proxy, keepalived, node, addons)}
ALL_COMPONENTS = tuple(MODULES[c] for c in components.ALL)


def components_for(node, first_master: bool = False) -> list[ModuleType]:
    """The components ``node`` (kthw.model.Node) runs, in order."""
    return [MODULES[c] for c in components.for_node(node, first_master)]
