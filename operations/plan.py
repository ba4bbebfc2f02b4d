"""What one host gets: its components' wants, checked against ONE snapshot of the host."""

from __future__ import annotations

import os
import posixpath
import sys
import time
from types import ModuleType

from pyinfra.api.exceptions import PyinfraError

from kthw.artifacts import ArtifactError
from kthw.commands import KUBECTL_ARG
from kthw.context import NEUTRAL_FACTS, DeployRefused, HostContext, Wants, prepared_cluster
from kthw.facts import HostState
from kthw.model import ClusterConfigError
from kthw.ops import Snapshot
from kthw.pki import PkiError
from kthw.preflight import REPLACE_IDENTITY, identity_refusal, nodes_in_run
from kthw.upgrade import VERSIONED, limit_refusal, skew_refusal
from operations import ALL_COMPONENTS, components_for, node


def collect(ctx: HostContext) -> dict[ModuleType, Wants]:
    """{component: what it wants on this host}, in the order the components run. A component
    the node may hold from a former deploy (``retired_on``: its role) without running it now
    asks only what its ``retired_wants`` needs to find and remove it."""
    running = components_for(ctx.node, ctx.is_first_master)
    return {m: (m.wants(ctx) if m in running else m.retired_wants(ctx)) for m in ALL_COMPONENTS
            if m in running or ctx.node.role in m.COMPONENT.retired_on}


def snapshot_spec(wants: dict[ModuleType, Wants]) -> dict:
    """Everything the snapshot must report for this host."""
    spec: dict = {"files": [], "dirs": [], "services": [], "sysctls": [], "packages": [],
                  "manifests": [], "images": [], "questions": {}}
    for w in wants.values():
        spec["files"] += [f.dest for f in w.all_files()]
        spec["dirs"] += [d.path for d in w.dirs]
        spec["services"] += w.services
        spec["sysctls"] += list(w.sysctls)
        spec["packages"] += w.all_packages()
        spec["manifests"] += w.manifests
        spec["images"] += w.images
        for name, arg in w.queries.items():  # two components asking one question: both lists
            have = spec["questions"].get(name)
            spec["questions"][name] = sorted({*have, *arg}) if isinstance(have, list) else arg
    # When each service and add-on was last restarted or applied by the deploy (kthw.ops.APPLIED_DIR).
    spec["applied"] = spec["services"] + [f"addon-{posixpath.basename(m)}" for m in spec["manifests"]]
    # A binary's running version is asked only if it is about to be replaced (version-skew check).
    spec["versions"] = {f.dest: f.sha256 for w in wants.values() for f in w.all_files() if f.dest in VERSIONED}
    if spec["manifests"]:
        spec["kubectl"] = KUBECTL_ARG
    return {k: (sorted(set(v)) if isinstance(v, list) else v) for k, v in spec.items()}


def host_plan(host) -> tuple[HostContext, dict[ModuleType, Wants]]:
    """The host's context and its components' wants, with ONE remote command (the snapshot)."""
    try:
        cluster = prepared_cluster(host.data.kthw_cluster)
        ctx = HostContext(cluster, cluster.node(host.data.kthw_node), dict(NEUTRAL_FACTS), data=host.data)
        spec = snapshot_spec(collect(ctx))  # which paths exist does not depend on host facts
        start = time.monotonic()
        raw = host.get_fact(HostState, spec=spec)
        if os.environ.get("KTHW_TIMINGS"):  # for bench/lab_deploy.py
            print(f"kthw-timing {host.name} snapshot {time.monotonic() - start:.3f}", file=sys.stderr)
        ctx.facts = raw
        ctx.snapshot = Snapshot(raw, spec)
        wants = collect(ctx)  # now with the host's facts (cgroup version, ...)
    except (ClusterConfigError, PkiError, ArtifactError, DeployRefused) as exc:
        raise PyinfraError(str(exc)) from None
    other = [f.dest for w in wants.values() for f in w.all_files()
             if f.identity and (have := ctx.snapshot.file(f.dest)) and have[0] != f.sha256
             and have[0] not in f.accepted]
    if other and not ctx.allow(REPLACE_IDENTITY):
        raise PyinfraError(identity_refusal(host.name, cluster, other))
    refuse_version_skew(host, ctx, wants)
    if snapshot_spec(wants)["files"] != spec["files"]:
        raise PyinfraError(f"{host.name}: the managed files depend on host facts; fix the component")
    return ctx, wants


def refuse_version_skew(host, ctx: HostContext, wants: dict[ModuleType, Wants]) -> None:
    """Refuse, before any host is touched, a version change the skew policy forbids on this host
    (kthw.upgrade), and a node upgrade without the masters in the run."""
    versions = ctx.cluster.versions.model_dump()
    for path, running in sorted((ctx.snapshot.raw.get("versions") or {}).items()):
        if why := skew_refusal(host.name, path, running, str(versions[VERSIONED[path]])):
            raise PyinfraError(why)
    masters = [m.name for m in ctx.cluster.masters]
    if node in wants and (why := limit_refusal(host.name, node.upgrading(ctx, wants[node]), masters, nodes_in_run())):
        raise PyinfraError(why)
