"""Rolling upgrades: which version changes the deploy accepts, and how a node is drained for one.

A change of ``versions`` in the cluster file upgrades the running cluster in the order
Kubernetes' version-skew policy wants (https://kubernetes.io/releases/version-skew-policy/):

1. etcd, one member at a time, each healthy before the next (``operations/etcd.py``);
2. kube-apiserver on each master in turn, each ready before the next; then the
   controller-manager and the scheduler in turn (never newer than an apiserver they reach);
3. every node (masters first, then workers), one at a time: the first master drains it, it
   restarts containerd, the kubelet and kube-proxy on their new binaries, the first master waits
   until it is Ready on the new version and uncordons it (``operations/upgrade.py``).

Before any host is touched, each host's running binaries are compared with the wanted ones
(:func:`skew_refusal`): a minor version skipped or a minor version down is refused, as
Kubernetes and etcd support neither. A node upgrade also needs every master in the run
(:func:`limit_refusal`): the control plane goes first, and the first master drains.

>>> parse_version("Kubernetes v1.36.3")
(1, 36, 3)
>>> parse_version("etcd Version: 3.6.16\\nGit SHA: abc")
(3, 6, 16)
"""

from __future__ import annotations

import re
import shlex

from kthw.commands import KUBECTL, wait_until
from kthw.paths import BIN_DIR, DRAIN_MARK

# The binaries whose version the skew policy constrains, and the `versions` key that pins each.
VERSIONED = {
    f"{BIN_DIR}/etcd": "etcd",
    f"{BIN_DIR}/kube-apiserver": "kubernetes",
    f"{BIN_DIR}/kube-controller-manager": "kubernetes",
    f"{BIN_DIR}/kube-scheduler": "kubernetes",
    f"{BIN_DIR}/kubelet": "kubernetes",
    f"{BIN_DIR}/kube-proxy": "kubernetes",
}
# Set on a Node by the drain, removed by the uncordon: a run interrupted in between still owes
# the uncordon (a node cordoned by hand carries no such mark and is left alone).
DRAINED = DRAIN_MARK
# How long a drain may wait for evictions (PodDisruptionBudgets, graceful termination).
DRAIN_TIMEOUT_S = 300

_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The first x.y.z in a version string (``--version`` output, a ``versions`` value)."""
    m = _VERSION.search(text or "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def skew_refusal(host: str, binary: str, running: str, wanted: str) -> str | None:
    """Why moving ``binary`` on ``host`` from the ``running`` version to ``wanted`` is refused,
    or None. Patch versions may go either way; a minor version only up, one at a time.

    >>> skew_refusal("master-1", "/usr/local/bin/kube-apiserver", "Kubernetes v1.36.3", "v1.37.2") is None
    True
    >>> print(skew_refusal("master-1", "/usr/local/bin/kube-apiserver", "Kubernetes v1.35.4", "v1.37.2"))
    ... # doctest: +NORMALIZE_WHITESPACE
    master-1: /usr/local/bin/kube-apiserver runs v1.35.4 and versions.kubernetes asks for v1.37.2,
    two minor versions at once; Kubernetes upgrades one minor version at a time (version-skew
    policy). Nothing was changed. Fix: set versions.kubernetes to the newest v1.36 patch release,
    deploy, then set v1.37.2 and deploy again.
    """
    have, want = parse_version(running), parse_version(wanted)
    if have is None or want is None or have[:2] == want[:2]:
        return None
    key = VERSIONED.get(binary, "?")
    project = "etcd" if key == "etcd" else "Kubernetes"
    head = (f"{host}: {binary} runs v{'.'.join(map(str, have))} and versions.{key} asks for {wanted}")
    if have[0] != want[0]:
        return (f"{head}, another major version; the deploy upgrades within one major version only. "
                f"Nothing was changed. Fix: set versions.{key} back to a v{have[0]} release.")
    if want[1] < have[1]:
        return (f"{head}, an older minor version; {project} does not support going back a minor version "
                "(its stored objects may already be in the newer form). Nothing was changed. Fix: set "
                f"versions.{key} back to v{have[0]}.{have[1]}.x or newer; to go back anyway, restore a backup "
                "taken before the upgrade on a cluster rebuilt at the old version (docs/day-two.md: Day two).")
    if want[1] - have[1] > 1:
        skipped = want[1] - have[1]
        return (f"{head}, {'two' if skipped == 2 else skipped} minor versions at once; {project} upgrades one minor "
                "version at a time (version-skew policy). Nothing was changed. Fix: set "
                f"versions.{key} to the newest v{have[0]}.{have[1] + 1} patch release, deploy, then set {wanted} "
                "and deploy again.")
    return None


def limit_refusal(host: str, upgrading: list[str], masters: list[str], active: set[str]) -> str | None:
    """A node whose kubelet, kube-proxy or containerd changes version needs every master in the
    same run: the control plane is upgraded first (a kubelet never newer than an apiserver) and
    the first master drains the node."""
    missing = [m for m in masters if m not in active]
    if not upgrading or not missing:
        return None
    return (f"{host}: {', '.join(upgrading)} change version, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not in this run (--limit). A node is upgraded after the "
            "control plane and drained from the first master. Nothing was changed. Fix: run without --limit, "
            f"or add the masters (--limit {','.join([*masters, host])}).")


def wants_drain(status: dict, kubernetes: str, containerd: str) -> bool:
    """Whether a running Node (as the first master's snapshot reports it: ``kubelet`` and
    ``runtime`` versions) is about to be upgraded, and so is drained first.

    >>> wants_drain({"kubelet": "v1.36.3", "runtime": "containerd://2.2.9"}, "v1.37.2", "v2.2.9")
    True
    >>> wants_drain({"kubelet": "v1.37.2", "runtime": "containerd://v2.2.9"}, "v1.37.2", "v2.2.9")
    False
    """
    runtime = status.get("runtime", "").removeprefix("containerd://").lstrip("v")
    return status.get("kubelet") != kubernetes or parse_version(runtime) != parse_version(containerd)


def drain(node: str, kubectl: str = KUBECTL) -> str:
    """Mark the node as drained by the deploy, then drain it (DaemonSet pods stay; a pod that no
    controller would bring back elsewhere stops the drain: kubectl says which)."""
    return (f"{kubectl} annotate node {shlex.quote(node)} {DRAINED}=true --overwrite >/dev/null && "
            f"{kubectl} drain {shlex.quote(node)} --ignore-daemonsets --delete-emptydir-data "
            f"--timeout={DRAIN_TIMEOUT_S}s >/dev/null")


def uncordon(node: str, kubernetes: str, kubectl: str = KUBECTL, timeout: int = 180) -> str:
    """Wait until the node is Ready and its kubelet reports ``kubernetes``, then uncordon it and
    drop the mark."""
    q = shlex.quote(node)
    ready = (f"[ \"$({kubectl} get node {q} --request-timeout=5s -o "
             "jsonpath='{.status.conditions[?(@.type==\"Ready\")].status} {.status.nodeInfo.kubeletVersion}')\" "
             f"= {shlex.quote('True ' + kubernetes)} ]")
    wait = wait_until(ready, f"{node} (Ready on {kubernetes})", timeout=timeout)
    return (f"({wait}) && {kubectl} uncordon {q} >/dev/null && "
            f"{kubectl} annotate node {q} {DRAINED}- >/dev/null")
