"""What ``reset.py`` removes from a machine: everything the deploy put there, by role.

One shell script per machine, derived from the components' records (kthw/components.py: their
units, folders, files, data and artifacts), so a newcomer can read exactly what
goes. Each thing it removes is reported on a ``removed: ...`` line. The order matters:

1. the kubelet stops first (it would restart the pods), then every pod is removed through the
   container runtime, then the services stop and are disabled;
2. what the pods left mounted under the kubelet's and containerd's folders is unmounted;
3. files, folders and data dirs go; then the pod network's interfaces, iptables rules (kube-proxy,
   Weave Net, the CNI plugins, our NAT rule) and routes.

Left in place, on purpose: the OS packages (they may have been there before), ``/etc/hosts``
and the hostname, and the live sysctl values (their file goes; a reboot drops them).
"""

from __future__ import annotations

import shlex

from kthw import components
from kthw.artifacts import CATALOGUE
from kthw.model import Cluster, Node
from kthw.paths import BIN_DIR, CONTAINERD_RUN, CONTAINERD_SOCK, CONTAINERD_STATE, KUBELET_DIR, UPLOAD_DIR


def undone(node: Node) -> tuple[components.Component, ...]:
    """The components reset undoes on ``node`` (kthw/components.py). Every master counts as the
    first one: any of them may have been first when the cluster file listed others."""
    return components.for_node(node, first_master=node.is_master)


def units(node: Node) -> list[str]:
    """Every service the node's components run, the last started first."""
    return [u for c in reversed(undone(node)) for u in (*reversed(c.units), *c.package_units)]


def removed_paths(node: Node, ssh_user: str = "root") -> list[str]:
    """What reset removes on ``node``: each component's folders, files, data and unit files, the
    binaries it installed, and the SSH user's upload folder (kthw.ops)."""
    found = [p for c in undone(node) for p in (*c.folders, *c.files, *c.data, *c.unit_files())]
    found += binaries(node)
    found.append(f"~{shlex.quote(ssh_user)}/{UPLOAD_DIR}")  # a validated login name (kthw.model)
    return list(dict.fromkeys(found))


# Interfaces Weave Net and the bridge CNI create; deleting one end of a veth pair deletes both.
LINKS = ("weave", "vethwe-datapath", "vethwe-bridge", "datapath", "vxlan-6784", "cni0")
# iptables lines that belong to kube-proxy (KUBE-), Weave Net (WEAVE), the CNI plugins (CNI-) and
# our NAT rule: the dump without them, restored, is the machine's own rules.
RULES = "KUBE-|WEAVE|CNI-|kthw-pod-network"
MOUNTS = "|".join((KUBELET_DIR, CONTAINERD_RUN, CONTAINERD_STATE, "/run/netns", "/var/run/netns"))
# reset.py's hosts share this process: the local state is moved aside once per run
LOCAL_STATE_MOVED: list[bool] = []


def binaries(node: Node) -> list[str]:
    """Every binary the deploy installs on this node (kthw/artifacts.py CATALOGUE)."""
    roles = components.roles_of(node)
    return sorted({dest for a in CATALOGUE if roles & a.roles for _, dest in a.installs})


def reset_script(cluster: Cluster, node: Node, ssh_user: str = "root") -> str:
    """The script that takes ``node`` back to before the deploy (idempotent: a second run
    finds nothing and says so). ``ssh_user``: whose upload folder goes too (kthw.ops)."""
    lines = ["set -u", 'say() { echo "removed: $*"; }', *_stop(node)]
    if node.runs_kubelet:
        lines += _unmount()
    lines += [
        f"for p in {' '.join(removed_paths(node, ssh_user))}; do",
        '  if [ -e "$p" ] || [ -L "$p" ]; then rm -rf "$p" && say "$p"; fi',
        "done",
    ]
    if node.runs_kubelet:
        lines += _pod_network_gone(cluster)
    lines += ["systemctl daemon-reload", "systemctl reset-failed >/dev/null 2>&1 || true"]
    return "\n".join(lines) + "\n"


def _stop(node: Node) -> list[str]:
    """The kubelet first (it would restart the pods), every pod through the runtime while it
    still runs (it unmounts them and frees their netns), then every service, stopped and disabled."""
    lines = []
    if node.runs_kubelet:
        lines += [
            "if systemctl is-active -q kubelet; then systemctl stop kubelet; fi",
            "if systemctl is-active -q containerd && command -v crictl >/dev/null; then "
            f"n=$(crictl -r unix://{CONTAINERD_SOCK} pods -q 2>/dev/null | wc -l); "
            f"crictl -r unix://{CONTAINERD_SOCK} rmp -af >/dev/null 2>&1 || true; "
            '[ "$n" -gt 0 ] && say "$n pods"; fi',
        ]
    return lines + [
        f"for u in {' '.join(units(node))}; do",
        # only one that runs or starts at boot: a package's unit (HAProxy's) stays, stopped, and
        # a second reset must find nothing to do
        '  if systemctl is-active -q "$u" 2>/dev/null ||',
        '     [ "$(systemctl is-enabled "$u" 2>/dev/null)" = enabled ]; then',
        '    systemctl disable --now "$u" >/dev/null 2>&1 || true; say "service $u (stopped, disabled)"',
        "  fi",
        "done",
    ]


def _unmount() -> list[str]:
    # containerd leaves its shims (KillMode=process); they hold the containers' mounts
    # (anchored at the binary's path: this script's own command line holds the name too)
    return [
        f"pkill -f '^{BIN_DIR}/containerd-shim-runc-v2 ' >/dev/null 2>&1 || true",
        f"findmnt -rn -o TARGET | grep -E '^({MOUNTS})(/|$)' | sort -r | while read -r m; do "
        'umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done',
    ]


def _pod_network_gone(cluster: Cluster) -> list[str]:
    """The pod network's interfaces, the iptables rules of kube-proxy, Weave Net, the CNI plugins
    and our NAT rule, and the routes to pod subnets."""
    cidrs = sorted({str(n.pod_cidr) for n in cluster.nodes if n.pod_cidr} | {str(cluster.pod_network)})
    return [
        f"for l in {' '.join(LINKS)}; do",
        '  if ip link show "$l" >/dev/null 2>&1; then ip link delete "$l" 2>/dev/null && say "interface $l"; fi',
        "done",
        "for t in iptables iptables-legacy iptables-nft ip6tables ip6tables-legacy ip6tables-nft; do",
        '  command -v "$t-save" >/dev/null || continue',
        f"  if \"$t-save\" 2>/dev/null | grep -q -E {shlex.quote(RULES)}; then",
        f"    \"$t-save\" | grep -v -E {shlex.quote(RULES)} | \"$t-restore\" && say \"$t rules of kube-proxy, "
        'the pod network and the CNI plugins"',
        "  fi",
        "done",
        f"for r in {' '.join(cidrs)}; do",
        '  while ip route del "$r" 2>/dev/null; do say "route to $r"; done',
        "done",
    ]
