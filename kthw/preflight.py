"""The checks every playbook makes while pyinfra plans it, before any host is touched.

deploy.py, backup.py, restore.py and reset.py start with :func:`playbook`; ``python -m kthw``'s
SSH commands share the inventory's host selection (kthw.inventory) and its sudo rule
(kthw.ssh.as_root). A refusal is a PyinfraError raised while planning: pyinfra then runs no
operation on any host, and the message says what is wrong and how to fix it.

1. The cluster file, validated (every problem at once, with its key and its fix).
2. The run's hosts (``--limit`` and ``--exclude`` alike): the nodes a playbook needs together.
3. The cluster identity: what the hosts hold against the local PKI. The deploy compares every
   identity file it places (operations/plan.py); the other playbooks compare the cluster CA, with
   one command per host, so none of them acts on another cluster's machines by mistake (a
   static inventory whose addresses were reused, a mixed-up KTHW_CLUSTER).

Stopped machines are named by the inventory (inventory.py) before pyinfra starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import state
from pyinfra.api.exceptions import PyinfraError

from kthw import paths
from kthw.facts import HostState
from kthw.model import Cluster, ClusterConfigError, Node, load_cluster
from kthw.pki import CA_NAME, ETCD_CA_NAME, known_trust

# --data kthw_replace_identity=yes: act on hosts that hold another identity, on purpose.
REPLACE_IDENTITY = "kthw_replace_identity"


@dataclass(frozen=True)
class Playbook:
    """What a playbook may be run on. ``whole``: every node of the cluster in one run."""

    name: str
    whole: bool = False
    why_whole: str = ""


def yes(host, key: str) -> bool:
    """A ``--data key=yes`` switch."""
    return str(host.data.get(key, "")).lower() in ("yes", "true", "1")


def load(host) -> Cluster:
    try:
        return load_cluster(host.data.kthw_cluster)
    except ClusterConfigError as exc:
        raise PyinfraError(str(exc)) from None


def nodes_in_run() -> set[str]:
    """The cluster's nodes this run acts on: in the inventory, and not left out by --limit or --exclude."""
    return {h.data.get("kthw_node", h.name) for h in state.inventory if state.is_host_in_limit(h)}


def host_of(node: str):
    """The pyinfra host of a node of this run (another host than the one being planned)."""
    return next(h for h in state.inventory if h.data.get("kthw_node", h.name) == node)


def missing_from_run(cluster: Cluster, needed: list[str] | None = None) -> list[str]:
    """Of ``needed`` (default: every node), those this run leaves out, in the cluster's order."""
    want = [n.name for n in cluster.nodes] if needed is None else needed
    active = nodes_in_run()
    return [n for n in want if n not in active]


def require_in_run(cluster: Cluster, needed: list[str], what: str, fix: str) -> None:
    if missing := missing_from_run(cluster, needed):
        raise PyinfraError(f"{what}, but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in this run "
                           f"(--limit, --exclude or a stopped machine). Nothing was touched. Fix: {fix}")


def identity_refusal(host_name: str, cluster: Cluster, differing: list[str]) -> str:
    return (f"{host_name} holds another cluster identity than {cluster.pki_dir}: {', '.join(differing)} differ. "
            "Nothing was changed. Fix: to manage that running cluster from here, copy its identity into the "
            "local state first (`python -m kthw pki adopt`); to replace it on purpose (CA rotation, every "
            "token, Secret and kubeconfig of the old identity stops working), rerun with "
            f"--data {REPLACE_IDENTITY}=yes (docs/pki.md: Cluster identity).")


def check_identity(host, cluster: Cluster, node: Node) -> None:
    """The host's CA against the local PKI's (one remote command), for the playbooks that do not
    deploy: the cluster CA on a Kubernetes node, etcd's CA on an etcd-only member. A host without
    one (a plain load balancer, a machine already reset) passes."""
    if not node.holds_certificates or yes(host, REPLACE_IDENTITY):
        return
    where, ca = (paths.CLUSTER_CA, CA_NAME) if node.runs_kubelet else (paths.ETCD_CA, ETCD_CA_NAME)
    held = host.get_fact(HostState, spec={"files": [where]})["files"].get(where)
    if held is None:
        return
    if not (cluster.pki_dir / f"{ca}.crt").exists():
        raise PyinfraError(f"{host.name} runs a cluster, and {cluster.pki_dir} holds no PKI to tell whether it is "
                           "this one. Nothing was touched. Fix: `python -m kthw pki adopt` (copies the running "
                           f"cluster's identity here), or rerun with --data {REPLACE_IDENTITY}=yes if you are sure.")
    if held[0] not in known_trust(cluster.pki_dir, ca):
        raise PyinfraError(identity_refusal(host.name, cluster, [where]))


def playbook(host, book: Playbook, identity: bool = True) -> tuple[Cluster, Node]:
    """Every check of this module for ``host``; returns the cluster and the host's node."""
    cluster = load(host)
    if book.whole:
        require_in_run(cluster, [n.name for n in cluster.nodes], f"{book.name} {book.why_whole}",
                       "run it without --limit and --exclude, with every machine up.")
    node = cluster.node(host.data.kthw_node)
    if identity:
        check_identity(host, cluster, node)
    return cluster, node
