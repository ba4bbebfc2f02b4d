"""Glue between pyinfra's ``host`` and our components (used by deploy.py)."""

from __future__ import annotations

from types import ModuleType

from pyinfra.api.exceptions import PyinfraError

from kthw.artifacts import ArtifactError
from kthw.context import NEUTRAL_FACTS, HostContext, Wants, prepared_cluster
from kthw.facts import HostState
from kthw.model import ClusterConfigError
from kthw.ops import Snapshot
from kthw.pki import PkiError
from operations.control_plane import ADMIN_KUBECONFIG


def components_for(ctx: HostContext, modules: list[ModuleType]) -> list[ModuleType]:
    """Which components a host gets: each group only what it needs."""
    names = {"base"}
    if ctx.is_master:
        names |= {"etcd", "control_plane"}
    if ctx.is_loadbalancer:
        names.add("loadbalancer")
    if ctx.is_worker:
        names.add("worker")
    if ctx.is_first_master:
        names.add("addons")
    return [m for m in modules if m.__name__.rsplit(".", 1)[-1] in names]


def collect(ctx: HostContext, modules: list[ModuleType]) -> dict[ModuleType, Wants]:
    return {m: m.wants(ctx) for m in components_for(ctx, modules)}


def snapshot_spec(ctx: HostContext, wants: dict[ModuleType, Wants]) -> dict:
    """Everything the snapshot must report for this host."""
    spec: dict = {"files": [], "dirs": [], "services": [], "sysctls": [], "packages": [],
                  "manifests": [], "images": []}
    for w in wants.values():
        spec["files"] += [f.dest for f in w.all_files()]
        spec["dirs"] += [d.path for d in w.dirs]
        spec["services"] += w.services
        spec["sysctls"] += list(w.sysctls)
        spec["packages"] += w.packages
        spec["manifests"] += w.manifests
        spec["images"] += w.images
    if spec["manifests"]:
        spec["kubectl"] = {"binary": "/usr/local/bin/kubectl", "kubeconfig": ADMIN_KUBECONFIG}
    return {k: (sorted(set(v)) if isinstance(v, list) else v) for k, v in spec.items()}


def host_context(host, modules: list[ModuleType]) -> tuple[HostContext, dict[ModuleType, Wants]]:
    """The host's context and wants, with ONE remote command (the HostState snapshot)."""
    try:
        cluster = prepared_cluster(host.data.kthw_cluster)
        ctx = HostContext(cluster, cluster.node(host.data.kthw_node), dict(NEUTRAL_FACTS))
        first = collect(ctx, modules)  # which paths exist does not depend on host facts
        spec = snapshot_spec(ctx, first)
        raw = host.get_fact(HostState, spec=spec)
        ctx.facts = raw
        ctx.snapshot = Snapshot(raw, spec)
        wants = collect(ctx, modules)  # now with the host's facts (cgroup version, ...)
    except (ClusterConfigError, PkiError, ArtifactError) as exc:
        raise PyinfraError(str(exc)) from None
    if snapshot_spec(ctx, wants)["files"] != spec["files"]:
        raise PyinfraError(f"{host.name}: the managed files depend on host facts; fix the component")
    return ctx, wants
