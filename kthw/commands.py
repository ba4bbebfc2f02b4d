"""Shell command lines the operations and the facts share, defined once: how to reach etcd
and the local apiserver on a master, and the one readiness loop."""

from __future__ import annotations

import math
import shlex

from kthw.paths import ADMIN_KUBECONFIG, BIN_DIR, ETCD_DIR

# etcd, over TLS with etcd's own CA, from a master (the member's certificate is also a client one).
ETCDCTL = (f"ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert={ETCD_DIR}/etcd-ca.crt "
           f"--cert={ETCD_DIR}/etcd-server.crt --key={ETCD_DIR}/etcd-server.key")
ETCD_HEALTHY = f"{ETCDCTL} endpoint health >/dev/null 2>&1"

# The master's own apiserver, as admin (kubectl on the master, never through the load balancer).
KUBECTL = f"kubectl --kubeconfig {ADMIN_KUBECONFIG}"
# The same, as the host snapshot's questions and manifest checks take it (kthw/remote/host_state.py).
KUBECTL_ARG = {"binary": f"{BIN_DIR}/kubectl", "kubeconfig": ADMIN_KUBECONFIG}
APISERVER_READY = f"{KUBECTL} get --raw /readyz >/dev/null 2>&1"


def etcd_members_healthy(endpoints: list[str]) -> str:
    """Condition: every listed etcd member answers healthy (asked with this member's certificate)."""
    if not endpoints:
        return "true"
    return ETCDCTL.replace("--endpoints=https://127.0.0.1:2379", f"--endpoints={','.join(endpoints)}") + (
        " endpoint health >/dev/null 2>&1")


# Exits 1 only when every address given (host:port) refuses a TCP connection at once: nothing
# listens there, for certain. Anything else (accepted, timed out, unreachable) exits 0.
ALL_REFUSE = """import socket, sys
for a in sys.argv[1:]:
    h, p = a.rsplit(":", 1)
    try:
        socket.create_connection((h.strip("[]"), int(p)), timeout=2).close()
        sys.exit(0)
    except ConnectionRefusedError:
        pass
    except OSError:
        sys.exit(0)
sys.exit(1)"""


def etcd_join(name: str, peer_url: str, endpoints: list[str]) -> str:
    """On a master whose etcd has no data yet: if the other members answer, a cluster runs, so
    this member is added to it (``etcdctl member add``, from here, with this member's
    certificate) and starts as ``existing``; if none answers, the cluster is new and nothing is
    done. A member listed already but never started (an interrupted join) is simply started; one
    that did start once has lost its data (a replaced disk): it is removed and added again, as
    etcd documents for replacing a failed member.

    When every other member's client port refuses connections outright (a new cluster: no etcd
    runs anywhere yet), etcdctl is not asked at all: it would retry until its 10 s timeout. A
    member that does not answer in time still gets the full etcdctl try."""
    ctl = ETCDCTL.replace("--endpoints=https://127.0.0.1:2379", f"--endpoints={','.join(endpoints)}") + (
        " --dial-timeout=3s --command-timeout=10s")
    peer = shlex.quote(f", {peer_url},")
    state = f"{ETCD_DIR}/initial-cluster-state.env"
    addresses = " ".join(shlex.quote(e.split("//", 1)[-1]) for e in endpoints)  # https://ip:2379 -> ip:2379
    listening = f"python3 -c {shlex.quote(ALL_REFUSE)} {addresses}"
    return (f"if {listening} && members=$({ctl} member list 2>/dev/null); then "
            f"line=$(echo \"$members\" | grep -F {peer} || true); "
            f"case \"$line\" in *', started,'*) {ctl} member remove \"${{line%%,*}}\" >/dev/null || exit 1; "
            "line='';; esac; "
            f"[ -n \"$line\" ] || {ctl} member add {shlex.quote(name)} --peer-urls={shlex.quote(peer_url)} "
            f">/dev/null || exit 1; echo ETCD_INITIAL_CLUSTER_STATE=existing > {state}; fi")


def etcd_lead_moved(endpoint: str, to_member: str) -> str:
    """If the member at ``endpoint`` leads the etcd cluster, hand the lead to ``to_member`` (hex
    id); if it does not lead or does not answer, do nothing."""
    ctl = ETCDCTL.replace("--endpoints=https://127.0.0.1:2379", f"--endpoints={endpoint}") + (
        " --dial-timeout=3s --command-timeout=10s")
    leads = ("import json, sys; s = json.load(sys.stdin)[0]['Status']; "
             "sys.exit(0 if s['header']['member_id'] == s['leader'] else 1)")
    return (f"if {ctl} endpoint status -w json 2>/dev/null | python3 -c {shlex.quote(leads)}; then "
            f"{ctl} move-leader {to_member} >/dev/null; fi")


def apiservers_ready(addresses: list[str]) -> str:
    """Condition: every listed apiserver answers /readyz (asked directly, not through the load
    balancer; kubectl is on every master, its CA and credentials in the admin kubeconfig)."""
    checks = [f"{KUBECTL} --server=https://{a}:6443 --request-timeout=5s get --raw /readyz >/dev/null 2>&1"
              for a in addresses]
    return " && ".join(checks) or "true"


def only_if_peers_healthy(self_healthy: str, peers_healthy: str, what: str, tries: int = 15,
                          delay: int = 2, doing: str = "restarting") -> str:
    """A guard before restarting a replicated service (or ``doing`` another pause to it): while
    this host's instance serves, the others must all be healthy (waiting up to ``tries`` x
    ``delay`` s), or the restart is refused and the command fails, so a rolling restart stops at
    the first member that did not come back.
    An instance that does not serve is restarted anyway: the restart may be its fix.

    >>> only_if_peers_healthy("a", "b", "etcd", tries=2)  # doctest: +NORMALIZE_WHITESPACE
    "if a; then ok=0; for i in $(seq 2); do b && { ok=1; break; }; sleep 2; done; [ $ok = 1 ] || {
    echo 'not restarting etcd: another member is not healthy (restarting this one too would take
    the service down)' >&2; exit 1; }; fi"
    """
    refuse = shlex.quote(f"not {doing} {what}: another member is not healthy "
                         f"({doing} this one too would take the service down)")
    return (f"if {self_healthy}; then ok=0; for i in $(seq {tries}); do {peers_healthy} && {{ ok=1; break; }}; "
            f"sleep {delay}; done; [ $ok = 1 ] || {{ echo {refuse} >&2; exit 1; }}; fi")


def wait_until(condition: str, what: str, timeout: int = 180, every: float = 1, on_failure: str = "") -> str:
    """A shell loop that waits until ``condition`` holds, asking every ``every`` seconds for
    ``timeout`` seconds, else runs ``on_failure`` (to show why), says "<what> not ready" and
    fails. Every second by default: a new cluster waits on several of these in turn, and each
    costs half a poll on average.

    >>> wait_until("true", "etcd", timeout=3)
    "for i in $(seq 3); do true && exit 0; sleep 1; done; echo 'etcd not ready' >&2; exit 1"
    """
    tail = f"{on_failure}; " if on_failure else ""
    return (f"for i in $(seq {math.ceil(timeout / every)}); do {condition} && exit 0; sleep {every:g}; done; "
            f"{tail}echo {shlex.quote(what + ' not ready')} >&2; exit 1")
