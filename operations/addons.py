"""Cluster-level objects, applied once, from the first master: RBAC for apiserver → kubelet,
the pod network (Weave Net; nothing for the bridge CNI), CoreDNS, and the control-plane role
label on the masters' Node objects (a kubelet may not set it on itself).

A manifest the cluster lacks (a new cluster, a new add-on) is applied as soon as the control
plane is up, before the nodes' services start (kubeadm's order too: add-ons after the control
plane, nodes after that), so each node's pods are scheduled the moment its kubelet registers and
their images pull while the deploy goes on. A changed one is applied after the nodes' stage, once
what its new pods need is on the nodes. What needs the Node objects (the labels, nodes gone from
the file) comes last.

Each manifest is rendered from ``files/etc/kubernetes/addons/*.j2`` with versions and images
from the model, kept on the master, and applied when it changed or when its objects are
missing from the cluster (the host snapshot checks that with ``kubectl get -f``).
"""

from __future__ import annotations

import hashlib

from pyinfra import host
from pyinfra.api.operation import OperationMeta

from kthw import components
from kthw.commands import KUBECTL, KUBECTL_ARG, wait_until
from kthw.context import DeployRefused, HostContext, Wants
from kthw.model import NODE_API_PORT
from kthw.ops import Directory, command_when, directories_present, files_synced, mark_applied
from kthw.paths import ADDONS_DIR, CLUSTER_CA, CONTROL_PLANE_LABEL, DRAIN_MARK
from kthw.pki import CA_NAME, WEAVE_PASSWORD, trust_bundle

COMPONENT = components.ADDONS

# the add-ons whose pods use the API with the in-cluster CA bundle (annotated with its digest)
API_CLIENTS = ("10-weave.yaml", "20-coredns.yaml")
ROOT_CA = f"{KUBECTL} -n kube-system get configmap kube-root-ca.crt"
TRUST_PUBLISHED = wait_until(
    f"{ROOT_CA} -o jsonpath='{{.data.ca\\.crt}}' 2>/dev/null | cmp -s - {CLUSTER_CA}",
    "kube-root-ca.crt (the controller-manager publishing the cluster's CA bundle)", timeout=120)
# A new cluster's first add-ons need not wait: pods that mount a bundle not yet published wait for
# it, and the first one published is the current one. One published but not current waits.
TRUST_CURRENT_OR_NONE = wait_until(
    f"{{ {{ none=$({ROOT_CA} --ignore-not-found -o name) && [ -z \"$none\" ]; }} || "
    f"{{ {ROOT_CA} -o jsonpath='{{.data.ca\\.crt}}' 2>/dev/null | cmp -s - {CLUSTER_CA}; }}; }}",
    "kube-root-ca.crt (the controller-manager publishing the cluster's CA bundle)", timeout=120)


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
        names += ["05-weave-password.yaml", "10-weave.yaml"]
    names.append("20-coredns.yaml")
    return names


def refuse_pod_network_change(ctx: HostContext) -> None:
    """Weave Net keeps its address allocations (/var/lib/weave on every node) for the range it
    started with; a new IPALLOC_RANGE on a running mesh would half-apply (new pods from the new
    range, old peers and routes on the old one). Stop before anything changes."""
    running = ctx.facts.get("weave_range", "")
    if running and running != str(ctx.cluster.pod_network):
        raise DeployRefused(
            f"network.pods is {ctx.cluster.pod_network}, but the running Weave Net uses {running}. "
            "Changing the pod network of a running Weave cluster is not supported: nothing was changed. "
            f"Fix: set network.pods back to {running}; or rebuild the cluster (`make down`, then `make up`)."
        )


def wants(ctx: HostContext) -> Wants:
    nodes = {**KUBECTL_ARG, "role_label": CONTROL_PLANE_LABEL, "drain_mark": DRAIN_MARK}
    w = Wants(dirs=[Directory(ADDONS_DIR)],
              queries={"control_plane_labelled": nodes, "node_names": nodes, "node_status": nodes})
    if ctx.cluster.cni == "weave":
        w.queries |= {"weave_range": KUBECTL_ARG, "weave_init": KUBECTL_ARG}
        refuse_pod_network_change(ctx)
    # Weave Net's first peers wait for each other before they share out the address range; a
    # running one keeps the value it started with (nodes coming or going must not roll its pods).
    weave_init = ctx.facts.get("weave_init") or f"consensus={len(ctx.cluster.kubelet_nodes)}"
    extra = {**_images(ctx), "coredns_replicas": min(2, len(ctx.cluster.workers)), "weave_init": weave_init,
             "node_api_port": NODE_API_PORT,
             "trust_bundle_sha256": hashlib.sha256(trust_bundle(ctx.cluster.pki_dir, CA_NAME)).hexdigest()}
    for name in manifest_names(ctx):
        if name == "05-weave-password.yaml":  # the only secret one: 0600, never shown in --diff
            password = (ctx.cluster.pki_dir / WEAVE_PASSWORD).read_text().strip()
            w.files[name] = [ctx.template_file(f"{ADDONS_DIR}/{name}", mode=0o600, secret=True,
                                               weave_password=password)]
        else:
            w.files[name] = [ctx.template_file(f"{ADDONS_DIR}/{name}", **extra)]
        w.manifests.append(f"{ADDONS_DIR}/{name}")
    return w


def deploy(ctx: HostContext, w: Wants) -> dict[str, OperationMeta]:
    """The manifests rendered, and those the cluster lacks applied at once (after the control
    plane, before the nodes: on a new cluster the pods are scheduled as each node registers).
    Returns each manifest's render operation for :func:`changes_applied`."""
    snap = ctx.snapshot
    directories_present(w.dirs, snap, name="addons | directory")
    rendered = {}
    for name in host.loop(manifest_names(ctx)):
        path = f"{ADDONS_DIR}/{name}"
        rendered[name] = files_synced(w.files[name], snap, name=f"addons | {name} rendered")
        command_when(_apply(name, TRUST_CURRENT_OR_NONE), always=not snap.manifest_present(path),
                     name=f"addons | {name} applied")
    return rendered


def changes_applied(ctx: HostContext, rendered: dict[str, OperationMeta]) -> None:
    """An add-on the cluster runs, applied again when it changed or when an interrupted run placed
    it and never applied it: after the nodes' stage, so what its new pods need is there first
    (a new image version imported where artifacts.images supplies the images, a node's CNI plugin
    placed before Weave Net's pods roll)."""
    snap = ctx.snapshot
    for name in host.loop(manifest_names(ctx)):
        path = f"{ADDONS_DIR}/{name}"
        running = snap.manifest_present(path)  # otherwise :func:`deploy` applied it
        command_when(_apply(name, TRUST_PUBLISHED), when=[rendered[name]] if running else [],
                     always=running and snap.pending(addon_key(name), [path]),
                     name=f"addons | {name} changes applied")


def _apply(name: str, trust_wait: str) -> str:
    # Pods that talk to the API get the CA bundle the controller-manager publishes in each
    # namespace (kube-root-ca.crt): after a CA change, wait until it is the new one before these
    # pods restart with it.
    wait = f"({trust_wait}) && " if name in API_CLIENTS else ""
    return f"{wait}{KUBECTL} apply -f {ADDONS_DIR}/{name} && {mark_applied(addon_key(name))}"


def nodes_reconciled(ctx: HostContext) -> None:
    """Node objects made to match the cluster file, once every node's services run."""
    snap = ctx.snapshot
    # Nodes gone from the cluster file (their machines may still run): drained, then deleted.
    gone = sorted(set(snap.query("node_names") or ()) - {n.name for n in ctx.cluster.kubelet_nodes})
    command_when(" && ".join(remove_node(n) for n in gone) or "true", always=bool(gone),
                 name="addons | nodes no longer in the cluster file drained and deleted")
    unlabelled = [m.name for m in ctx.cluster.masters if m.name not in snap.query("control_plane_labelled")]
    command_when(label_control_plane(unlabelled), when=[], always=bool(unlabelled),
                 name="addons | masters labelled node-role control-plane")


def remove_node(name: str, kubectl: str = KUBECTL) -> str:
    """Drain a node (its pods rescheduled elsewhere; DaemonSet pods stay until the node goes),
    then delete its Node object."""
    return (f"{kubectl} drain {name} --ignore-daemonsets --delete-emptydir-data --force --timeout=180s >/dev/null "
            f"&& {kubectl} delete node {name} >/dev/null")


def addon_key(name: str) -> str:
    """The add-on's name in the deploy's record of what it applied (kthw.ops.APPLIED_DIR)."""
    return f"addon-{name}"


def label_control_plane(nodes: list[str], kubectl: str = KUBECTL, timeout: int = 120) -> str:
    """Label these masters' Node objects with the control-plane role, once they exist (a fresh
    master's kubelet may still be registering)."""
    names = " ".join(nodes)
    wait = wait_until(f"{kubectl} get node {names} >/dev/null 2>&1", f"Node objects of {names}", timeout=timeout,
                      every=0.5)
    # The wait loop ends with `exit`: run it in a subshell so the label command still runs.
    return f"({wait}) && {kubectl} label node {names} {CONTROL_PLANE_LABEL}= --overwrite >/dev/null"
