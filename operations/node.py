"""Every Kubernetes node (workers and masters): binaries → containerd (+ runc, CNI plugins,
crictl) → kubelet → kube-proxy → (bridge CNI) pod network config and routes.

Masters are nodes too, registered with the control-plane taint so ordinary pods stay on the
workers: the CNI (Weave Net's DaemonSet, or the bridge routes) then reaches them, and the
apiservers can call what runs in pods (admission and conversion webhooks, aggregated APIs),
as on a kubeadm cluster.

The kubelet authenticates with its own certificate, serves with it too, and accepts only
authenticated, apiserver-authorized requests (webhook), never anonymous ones.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from pyinfra import host

from kthw import components, packing
from kthw.context import HostContext, Wants
from kthw.ops import (
    Directory,
    ManagedFile,
    Placed,
    command_when,
    dests,
    directories_present,
    files_synced,
    placed,
    service_running,
)
from kthw.paths import (
    CERTS_D,
    CLUSTER_CA,
    CNI_BIN,
    CNI_CONF,
    CNI_DIR,
    CNI_ETC,
    CNI_NEIGH_FLUSH,
    CONTAINERD_DIR,
    CONTROL_PLANE_LABEL,
    CRICTL_CONF,
    IMAGES_DIR,
    K8S_DIR,
    K8S_PKI,
    KUBE_PROXY_DIR,
    KUBE_PROXY_KUBECONFIG,
    KUBELET_CONFIG,
    KUBELET_DIR,
    KUBELET_KUBECONFIG,
    KUBELET_PKI,
    MANAGED_MARK,
    WEAVE_TARGETS_URL,
    unit_file,
)
from kthw.pki import kubelet_cert_name

COMPONENT = components.NODE
# Debian/Ubuntu packages kubelet and kube-proxy need besides what the box ships.
PACKAGES = ["socat", "conntrack", "ipset", "iptables", "ethtool", "kmod", "openssl"]

PAUSE_IMAGE = "registry.k8s.io/pause:{v}"


# Masters register with it (kubelet registerWithTaints); only pods that tolerate it (the CNI's
# DaemonSet, kube-system's own) land there. The label is set by the addons (a kubelet may not
# label itself node-role.kubernetes.io/*).
CONTROL_PLANE_TAINT = {"key": CONTROL_PLANE_LABEL, "effect": "NoSchedule"}


def forget_weave_peers(addresses: list[str]) -> str:
    """POST /forget to the local Weave Net router (what `weave forget` does), with python3: the
    node has no weave script and maybe no curl."""
    if not addresses:
        return "true"
    post = ("import sys, urllib.parse, urllib.request; urllib.request.urlopen('http://127.0.0.1:6784/forget', "
            "urllib.parse.urlencode([('peer', a) for a in sys.argv[1:]]).encode(), timeout=10)")
    return f"python3 -c {shlex.quote(post)} " + " ".join(shlex.quote(a) for a in addresses)


def _in_pod_network(c, route: str) -> bool:
    try:
        return IPv4Network(route).subnet_of(c.pod_network)
    except ValueError:
        return False


def _peers(ctx: HostContext):
    return [n for n in ctx.cluster.kubelet_nodes if n.name != ctx.node.name]


@dataclass
class Restart:
    """A service restart a node owes, made in its upgrade turn (operations/upgrade.py)."""

    unit: str
    restart_on: list[Placed]
    reload_on: list[Placed]


def upgrading(ctx: HostContext, w: Wants) -> list[str]:
    """The binaries (kubelet, kube-proxy, containerd, runc...) that change on a node that runs
    already, or the services still owed a restart on binaries an interrupted run placed: then the
    node is upgraded in its turn, drained first. Empty for a new node and for config changes."""
    snap = ctx.snapshot
    if snap.service("kubelet")[0] != "active":
        return []
    binaries = w.files["runtime binaries"] + w.files["kubernetes binaries"]
    changed = [posixpath.basename(f.dest) for f in binaries if (snap.file(f.dest) or ("",))[0] != f.sha256]
    owed = [u for u, group in (("containerd", "runtime binaries"), ("kubelet", "kubernetes binaries"),
                               ("kube-proxy", "kubernetes binaries"))
            if snap.service(u)[0] == "active" and snap.pending(u, dests(w.files[group]))]
    return changed or [f"{u} (restart owed)" for u in owed]


def wants(ctx: HostContext) -> Wants:
    w = Wants(services=[u for u in COMPONENT.units if u != "kthw-pod-network"],  # (bridge CNI only, below)
              packages=list(PACKAGES), queries={"managed_registry_hosts": {"certs_d": CERTS_D, "mark": MANAGED_MARK}})
    w.dirs = [
        Directory(CONTAINERD_DIR), Directory(CERTS_D), Directory(CNI_DIR), Directory(CNI_BIN),
        Directory(CNI_ETC), Directory(CNI_CONF),
        Directory(K8S_DIR), Directory(K8S_PKI, 0o700),
        Directory(KUBELET_DIR, 0o700), Directory(KUBELET_PKI, 0o700),
        Directory(KUBE_PROXY_DIR, 0o700),
    ]
    for part in (_runtime_wants, _kubelet_wants, _kube_proxy_wants, _image_wants, _pod_network_wants):
        part(ctx, w)
    return w


def _runtime_wants(ctx: HostContext, w: Wants) -> None:
    """containerd, runc, the CNI plugins and crictl; registry mirrors (artifacts.registry_mirrors:
    containerd reads hosts.toml at each pull, so a change needs no restart)."""
    c = ctx.cluster
    w.files["runtime binaries"] = ctx.binaries({"containerd", "runc", "cni-plugins", "crictl"})
    w.files["containerd config"] = [
        ctx.template_file(f"{CONTAINERD_DIR}/config.toml", pause_image=PAUSE_IMAGE.format(v=c.versions.pause)),
        ctx.template_file(CRICTL_CONF),
    ]
    mirrors = c.artifacts.registry_mirrors
    w.dirs += [Directory(f"{CERTS_D}/{registry}") for registry in mirrors]
    w.files["registry mirrors"] = [
        ctx.template_file(f"{CERTS_D}/{registry}/hosts.toml", template="etc/containerd/certs.d/REGISTRY/hosts.toml.j2",
                          registry=registry, mirrors=urls)
        for registry, urls in mirrors.items()
    ]
    w.files["containerd unit"] = [ctx.template_file(unit_file("containerd"))]


def _kubelet_wants(ctx: HostContext, w: Wants) -> None:
    facts = ctx.facts
    w.files["kubernetes binaries"] = ctx.binaries({"kubelet", "kube-proxy"})
    cert = kubelet_cert_name(ctx.node.name)
    # (A master already holds the cluster CA there, placed by the control plane.)
    ca = [] if ctx.is_master else [ctx.pki_file("ca.crt", CLUSTER_CA)]
    w.files["kubelet credentials"] = [
        *ca,
        ctx.pki_file(f"{cert}.crt", f"{KUBELET_PKI}/kubelet.crt"),
        ctx.pki_file(f"{cert}.key", f"{KUBELET_PKI}/kubelet.key"),
        ctx.kubeconfig_file(cert, KUBELET_KUBECONFIG),
    ]
    resolv = "/run/systemd/resolve/resolv.conf" if facts.get("resolved") else "/etc/resolv.conf"
    # 0600: the CIS benchmark wants the kubelet's config readable by root only.
    w.files["kubelet config"] = [ctx.template_file(
        KUBELET_CONFIG, mode=0o600, resolv_conf=resolv, cgroup_v1=facts.get("cgroup") == "v1",
        taints=[CONTROL_PLANE_TAINT] if ctx.is_master else [], extra_args="kubelet",
    )]
    w.files["kubelet unit"] = [ctx.template_file(unit_file("kubelet"))]


def _kube_proxy_wants(ctx: HostContext, w: Wants) -> None:
    w.files["kube-proxy config"] = [
        ctx.kubeconfig_file("kube-proxy", KUBE_PROXY_KUBECONFIG),
        ctx.template_file(f"{KUBE_PROXY_DIR}/kube-proxy-config.yaml", container=bool(ctx.facts.get("container")),
                          extra_args="kube-proxy"),
    ]
    w.files["kube-proxy unit"] = [ctx.template_file(unit_file("kube-proxy"))]


def _image_wants(ctx: HostContext, w: Wants) -> None:
    """Offline image archives (artifacts.images): Weave Net's only where the cluster runs it."""
    images = [i for i in ctx.images() if ctx.cluster.cni == "weave" or "weaveworks/" not in i[2]]
    if images:
        w.dirs.append(Directory(IMAGES_DIR, 0o755))
        w.files["images"] = [ManagedFile.binary(f"{IMAGES_DIR}/{path.name}", path, sha, mode=0o644,
                                                zstd_cache=packing.cache_dir(ctx.cluster)) for path, sha, _ in images]
        w.images = [ref for _, _, ref in images if ref]


def _pod_network_wants(ctx: HostContext, w: Wants) -> None:
    """Weave Net: the peers its router connects to. Bridge CNI: its config, and routes to every
    other node's pod subnet (a unit of ours)."""
    c = ctx.cluster
    if c.cni == "weave":
        w.queries["weave_targets"] = {"url": WEAVE_TARGETS_URL}
        w.files["weave cni plugin"] = [ctx.template_file(CNI_NEIGH_FLUSH, mode=0o755)]
        return
    w.files["bridge cni"] = [ctx.template_file(f"{CNI_CONF}/10-bridge.conflist"),
                             ctx.template_file(f"{CNI_CONF}/99-loopback.conf")]
    w.services.append("kthw-pod-network")
    w.queries["pod_routes"] = {}
    masquerade = (f"-s {ctx.node.pod_cidr} ! -d {c.pod_network} -j MASQUERADE "
                  "-m comment --comment kthw-pod-network")
    w.files["pod network unit"] = [ctx.template_file(
        unit_file("kthw-pod-network"), peers=_peers(ctx), masquerade=masquerade)]


@dataclass
class _Services:
    """How this node (re)starts its services in this run: in place, or, for a node being
    upgraded, started if it is not running and restarted later in its turn (the restarts owed)."""

    snap: object
    in_turn: bool
    owed: list[Restart] = field(default_factory=list)

    def running(self, unit: str, restart_on: list[Placed], reload_on: list[Placed], name: str) -> None:
        if self.in_turn:
            self.owed.append(Restart(unit, restart_on, reload_on))
            restart_on = []
        service_running(unit, self.snap, restart_on=restart_on, reload_on=reload_on, name=name)


def deploy(ctx: HostContext, w: Wants) -> list[Restart]:
    """The node's operations; returns the restarts it owes in its upgrade turn (none unless
    :func:`upgrading`): an upgraded node's services start on their new binaries only once the
    first master has drained it."""
    services = _Services(ctx.snapshot, in_turn=bool(upgrading(ctx, w)))
    directories_present(w.dirs, ctx.snapshot, name="node | directories")
    _runtime(ctx, w, services)
    _images(ctx, w)
    _pod_network(ctx, w)
    _kubelet_and_proxy(ctx, w, services)
    return services.owed


def _runtime(ctx: HostContext, w: Wants, services: _Services) -> None:
    c, snap = ctx.cluster, ctx.snapshot
    runtime = placed(w.files["runtime binaries"], snap, name="node | containerd, runc, CNI, crictl")
    config = placed(w.files["containerd config"], snap, name="node | containerd config")
    unit = placed(w.files["containerd unit"], snap, name="node | containerd unit")
    services.running("containerd", restart_on=[runtime, config, unit], reload_on=[unit],
                     name="node | containerd running")
    files_synced(w.files["registry mirrors"], snap, name="node | registry mirrors")
    # A registry dropped from artifacts.registry_mirrors: remove the hosts.toml we wrote for it.
    dropped = sorted(set(snap.query("managed_registry_hosts") or ()) - set(c.artifacts.registry_mirrors))
    command_when(" && ".join(f"rm -rf {CERTS_D}/{shlex.quote(r)}" for r in dropped) or "true",
                 always=bool(dropped), name="node | registry mirrors no longer configured removed")


def _images(ctx: HostContext, w: Wants) -> None:
    if "images" not in w.files:
        return
    snap = ctx.snapshot
    archives = files_synced(w.files["images"], snap, name="node | offline image archives")
    # Import when an archive changed or containerd lost an image.
    missing = [ref for ref in w.images if not snap.image_present(ref)]
    command_when(
        f"for f in {IMAGES_DIR}/*.tar; do ctr -n k8s.io images import \"$f\" >/dev/null "
        "|| exit 1; done",
        when=[archives], always=bool(missing), name="node | images imported into containerd",
    )


def _pod_network(ctx: HostContext, w: Wants) -> None:
    c, snap = ctx.cluster, ctx.snapshot
    if c.cni == "weave":
        # Before the kubelet starts Weave's pod: its init container puts it in the CNI chain only
        # where it is.
        files_synced(w.files["weave cni plugin"], snap, name="node | CNI plugin kthw-neigh-flush")
        # Weave Net's router retries every address it ever connected to: a node gone from the
        # cluster is forgotten (its IP range is reclaimed by Weave's own daemon once the Node goes).
        known = {str(n.ip) for n in c.kubelet_nodes}
        gone = sorted(t for t in snap.query("weave_targets") or () if t not in known)
        command_when(forget_weave_peers(gone), always=bool(gone),
                     name="node | Weave Net peers no longer in the cluster forgotten")
        return
    files_synced(w.files["bridge cni"], snap, name="node | bridge CNI config")
    routes = placed(w.files["pod network unit"], snap,
                    name="node | pod network: routes to other nodes' pods, NAT to the outside")
    service_running("kthw-pod-network", snap, restart_on=[routes], reload_on=[routes],
                    name="node | pod network active")
    # A route to a node no longer in the cluster (the unit only knows today's peers).
    wanted = {str(p.pod_cidr) for p in _peers(ctx)} | {str(ctx.node.pod_cidr)}
    stale = sorted(r for r in snap.query("pod_routes") or () if r not in wanted and _in_pod_network(c, r))
    command_when(" && ".join(f"ip route del {shlex.quote(r)}" for r in stale) or "true", always=bool(stale),
                 name="node | routes to pods of nodes no longer in the cluster removed")


def _kubelet_and_proxy(ctx: HostContext, w: Wants, services: _Services) -> None:
    snap = ctx.snapshot
    k8s = placed(w.files["kubernetes binaries"], snap, name="node | kubelet and kube-proxy binaries")
    creds = placed(w.files["kubelet credentials"], snap, name="node | kubelet credentials")
    kconf = placed(w.files["kubelet config"], snap, name="node | kubelet config")
    kunit = placed(w.files["kubelet unit"], snap, name="node | kubelet unit")
    services.running("kubelet", restart_on=[k8s, creds, kconf, kunit], reload_on=[kunit],
                     name="node | kubelet running")
    pconf = placed(w.files["kube-proxy config"], snap, name="node | kube-proxy config")
    punit = placed(w.files["kube-proxy unit"], snap, name="node | kube-proxy unit")
    services.running("kube-proxy", restart_on=[k8s, pconf, punit], reload_on=[punit],
                     name="node | kube-proxy running")


def restarted_in_turn(ctx: HostContext, owed: list[Restart]) -> None:
    """This node's turn of a rolling upgrade (drained by now): its services restart on their new
    binaries; the first master then waits until it is Ready and uncordons it."""
    for r in host.loop(owed):
        service_running(r.unit, ctx.snapshot, restart_on=r.restart_on, reload_on=r.reload_on,
                        name=f"node | {r.unit} restarted on its new binaries, in this node's turn")
