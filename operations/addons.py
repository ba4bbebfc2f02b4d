"""Cluster-level objects, applied once, from the first master: RBAC for apiserver → kubelet,
the pod network (Weave Net; nothing for the bridge CNI), CoreDNS.

Each manifest is rendered from ``files/etc/kubernetes/addons/*.j2`` with versions and images
from the model, kept on the master, and applied when it changed or when its objects are
missing from the cluster (the host snapshot checks that with ``kubectl get -f``).
"""

from __future__ import annotations

from pyinfra import host

from kthw.commands import KUBECTL
from kthw.context import HostContext, Wants
from kthw.ops import Directory, command_when, directories_present, files_synced

ADDONS = "/etc/kubernetes/addons"


def _images(ctx: HostContext) -> dict[str, str]:
    v = ctx.cluster.versions
    weave = v.weave.lstrip("v")
    return {
        "weave_tag": weave,
        "weave_kube_image": f"weaveworks/weave-kube:{weave}",
        "weave_npc_image": f"weaveworks/weave-npc:{weave}",
        "coredns_image": f"registry.k8s.io/coredns/coredns:{v.coredns}",
    }


def manifest_names(ctx: HostContext) -> list[str]:
    names = ["00-apiserver-to-kubelet.yaml"]
    if ctx.cluster.cni == "weave":
        names.append("10-weave.yaml")
    names.append("20-coredns.yaml")
    return names


def wants(ctx: HostContext) -> Wants:
    w = Wants(dirs=[Directory(ADDONS)])
    extra = {**_images(ctx), "coredns_replicas": min(2, len(ctx.cluster.workers))}
    for name in manifest_names(ctx):
        w.files[name] = [ctx.template_file(f"{ADDONS}/{name}", **extra)]
        w.manifests.append(f"{ADDONS}/{name}")
    return w


def deploy(ctx: HostContext, w: Wants) -> None:
    snap = ctx.snapshot
    directories_present(w.dirs, snap, name="addons | directory")
    for name in host.loop(manifest_names(ctx)):
        path = f"{ADDONS}/{name}"
        changed = files_synced(w.files[name], snap, name=f"addons | {name} rendered")
        missing = not snap.manifest_present(path)
        command_when(f"{KUBECTL} apply -f {path}", when=[changed], always=missing,
                     name=f"addons | {name} applied")
