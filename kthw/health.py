"""Is the cluster well? ``python -m kthw health``: one command, one table, exit 1 when anything
is wrong (2 when it cannot tell: a cluster file, inventory or identity problem).

    $ python -m kthw health
    CHECK         SUBJECT                      STATUS  DETAIL
    ssh           every node                   OK      5 of 5 nodes answered
    services      worker-1                     FAIL    enabled but not running: kubelet inactive (dead)
    etcd          cluster                      OK      leader master-1, 2 of 2 members healthy, no alarm
    apiserver     entrance 192.168.56.30:6443  OK      ready
    leases        kube-scheduler               OK      held by master-1, renewed 1 s ago (lease 15 s)
    pod network   worker-2                     OK      Weave Net connected to every peer (3)
    snapshot      etcd                         WARN    no etcd snapshot yet: take one with backup.py (...)
    ...
    33 rows: 31 OK, 1 WARN, 1 FAIL

How: every node gets one SSH command, all in parallel (kthw/remote/health_probe.py, stdlib
python3, as root): it answers whatever that node can answer, as JSON. The masters read the
cluster through their own apiserver (the admin kubeconfig on the master: it works with the load
balancer down, and any one master that answers is enough); the etcd members ask their own
member; every Kubernetes node asks its Weave Net router (or lists its routes), the cluster DNS and
its local API proxy; certificates are read as ``kthw certs`` reads them; the masters list the
names in their etcd snapshot folder. The operator machine asks the entrance
(``cluster.api_server_url``) itself, as the operator's kubectl would. A node that does not answer
is a FAIL row naming it, never a crash. Nothing secret is read or printed.

What each check says (rows of check, subject, status, detail):

- ssh: every node answered.
- services: every service of ours (or of the packages we run) that is enabled is active, the
  masters' snapshot timer too.
- nodes: every Kubernetes node of the cluster file has its Node, Ready (cordoned: WARN; a Node
  the file does not know: WARN).
- etcd: each member answers its status without errors (its database size against its quota:
  WARN above 80 %); the cluster: a quorum healthy, one leader all agree on, no alarm.
- apiserver: each master's /readyz, asked on the master; the entrance's /readyz from here (with
  two load balancers, each one's too).
- api proxy: each node's own HAProxy (127.0.0.1:7445, the kubelet's way to the API) answers /readyz.
- leases: the kube-scheduler and kube-controller-manager Leases have a holder who renewed
  within the lease's duration (judged by the answering master's clock).
- dns: the kube-dns Service has ready endpoints (some not ready: WARN); every Kubernetes node
  asks the cluster DNS for ``kubernetes.default.svc.<domain>`` and gets the API service's
  address. No node answered: FAIL; some nodes not: WARN (that node's pod network is the likelier
  fault, and the pod network check names it).
- pod network: Weave Net: every node's router has an established connection to every other
  node. Bridge: every node routes every other node's pod subnet through that node.
- certificates: none inside the renewal window (``pki.renew_before_days``, or ``--within``),
  judged as ``kthw certs`` judges.
- snapshot: the newest etcd snapshot, of ``backup.py``'s in the operator's backup folder and the
  masters' scheduled ones (each master lists the names in /var/lib/etcd-snapshots; a ``.db``
  counts with its ``.sha256`` beside it, as kthw/snapshots.py decides), named where it is
  (``master-2:etcd-<time>.db``, as restore.py takes it). No snapshot at all is a WARN, and so is
  one too old: with ``backup.scheduled``, older than twice ``backup.every`` and a margin (one
  missed run is let pass, two are not), else older than a week; with ``--snapshot-max-age HOURS``
  either is a FAIL instead. A missing backup is a risk, not a fault of the running cluster: it
  fails the check only when the operator said how old is too old. With the schedule on, a master
  whose timer is enabled but that holds no snapshot within that window is a WARN row of its own
  (the other masters' snapshots may keep the newest young).
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kthw import certs, components, snapshots
from kthw.backup import available
from kthw.castore import CA_NAME, ETCD_CA_NAME, ca_path, known_trust, trust_bundle
from kthw.commands import ETCDCTL, KUBECTL_ARG
from kthw.hostcerts import READ_COMMAND, parse_host
from kthw.model import API_PORT, NODE_API_PORT, Cluster, Node
from kthw.paths import CLUSTER_CA, ETCD_CA, ETCD_SNAPSHOTS, WEAVE_REPORT_URL, unit_name

PROBE_SCRIPT = (Path(__file__).parent / "remote" / "health_probe.py").read_text()

OK, WARN, FAIL = "OK", "WARN", "FAIL"
# The checks, in the order the table lists them.
CHECKS = ("ssh", "services", "nodes", "etcd", "apiserver", "api proxy", "leases", "dns", "pod network",
          "certificates", "snapshot")
LEASES = ("kube-scheduler", "kube-controller-manager")  # leader election, in kube-system
# What a master's kubectl reads for the nodes, leases and dns checks: one kubectl, one JSON List.
CLUSTER_RESOURCES = "nodes,leases.coordination.k8s.io,endpointslices.discovery.k8s.io"
DNS_SERVICE = "kube-dns"
ETCD_DEFAULT_QUOTA = 2 * 1024**3  # etcd's --quota-backend-bytes default (an etcd older than 3.6 does not say)
ETCD_QUOTA_WARN = 0.8
ETCD_ALARMS = {1: "NOSPACE", 2: "CORRUPT"}  # etcdserverpb.AlarmType as etcdctl's JSON prints it
NODE_PROXY_READYZ = f"https://127.0.0.1:{NODE_API_PORT}/readyz"  # a node's own HAProxy in front of the apiservers
SNAPSHOT_WARN_AGE = dt.timedelta(days=7)  # without --snapshot-max-age or a schedule: older is a WARN
# Beyond twice backup.every: a snapshot run takes a while (seconds to minutes for a large database).
SNAPSHOT_RUN_MARGIN = dt.timedelta(minutes=5)
SNAPSHOT_SERVICE, SNAPSHOT_TIMER = components.ETCD_SNAPSHOTS.units  # the masters' (operations/snapshots.py)
# etcdctl on an etcd member, with timeouts: a member that does not answer must not hold up the report.
ETCDCTL_PROBE = f"{ETCDCTL} --dial-timeout=3s --command-timeout=5s"


class HealthConfigError(Exception):
    """The health of this cluster cannot be told from here (exit 2): no local PKI, no inventory,
    or the machines hold another cluster's identity. The message says how to fix it."""


@dataclass(frozen=True)
class Row:
    check: str
    subject: str
    status: str  # OK, WARN or FAIL
    detail: str


@dataclass(frozen=True)
class Snapshot:
    """An etcd snapshot somewhere: where it is and when it was taken."""

    where: str
    taken: dt.datetime


@dataclass
class Answers:
    """Everything gathered: each node's probe answer, why the others gave none, the operator's
    own /readyz through the entrance (url -> result), and snapshots found besides the operator's
    backups and the masters' (whose listings are in their answers): more candidates for the newest."""

    nodes: dict[str, dict] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    entrance: dict[str, dict] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)


# --------------------------------------------------------------------------- what each node is asked


def local_readyz(node: Node) -> list[str]:
    """The /readyz URLs a node asks itself: a master its own apiserver, a Kubernetes node its own
    HAProxy (the way its kubelet and kube-proxy reach the API)."""
    urls = [f"https://127.0.0.1:{API_PORT}/readyz"] if node.is_master else []
    if node.runs_kubelet:
        urls.append(NODE_PROXY_READYZ)
    return urls


def probe_spec(cluster: Cluster, node: Node) -> dict:
    """What ``node`` is asked (kthw/remote/health_probe.py reads it)."""
    # systemd's full names: the snapshot timer is a .timer, not a .service
    spec: dict = {"services": [unit_name(u) for u in components.all_units()]}
    if node.runs_kubelet:
        spec["identity"] = CLUSTER_CA
    elif node.runs_etcd:
        spec["identity"] = ETCD_CA
    if node.holds_certificates:
        spec["certs"] = READ_COMMAND
    if node.runs_etcd:
        spec["etcd"] = ETCDCTL_PROBE
    if node.is_master:
        spec["kubectl"] = {**KUBECTL_ARG, "resources": CLUSTER_RESOURCES}
        # listed even with backup.scheduled false: the snapshots taken stay when the timer goes
        spec["snapshots"] = ETCD_SNAPSHOTS
    if node.runs_kubelet:
        spec["readyz"], spec["cafile"] = local_readyz(node), CLUSTER_CA
        spec["dns"] = {"server": str(cluster.cluster_dns), "name": dns_name(cluster)}
        if cluster.cni == "weave":
            spec["weave"] = WEAVE_REPORT_URL
        else:
            spec["routes"] = True
    return spec


def dns_name(cluster: Cluster) -> str:
    return f"kubernetes.default.svc.{cluster.domain}"


def probe_command(cluster: Cluster, node: Node) -> str:
    return f"python3 -c {shlex.quote(PROBE_SCRIPT)} {shlex.quote(json.dumps(probe_spec(cluster, node)))}"


def entrance_urls(cluster: Cluster) -> dict[str, str]:
    """subject -> /readyz URL the operator machine asks: the entrance, and with two load
    balancers each one's own address too (the one not holding the virtual IP is the spare)."""
    urls = {f"entrance {cluster.api_server_url.removeprefix('https://')}": f"{cluster.api_server_url}/readyz"}
    if len(cluster.loadbalancers) > 1:
        for lb in cluster.loadbalancers:
            urls[f"{lb.name} {lb.ip}:{API_PORT}"] = f"https://{lb.ip}:{API_PORT}/readyz"
    return urls


# --------------------------------------------------------------------------- judging the answers


def _error(section) -> str | None:
    """The error a probe section answered, if it answered one."""
    return section.get("error") if isinstance(section, dict) else None


def _first_line(text: str, n: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= n else line[: n - 3] + "..."


def ssh_rows(cluster: Cluster, answers: Answers) -> list[Row]:
    if not answers.unreachable:
        return [Row("ssh", "every node", OK, f"{len(answers.nodes)} of {len(cluster.nodes)} nodes answered")]
    return [Row("ssh", n.name, FAIL, _first_line(answers.unreachable[n.name]))
            for n in cluster.nodes if n.name in answers.unreachable]


def service_rows(cluster: Cluster, answers: Answers) -> list[Row]:
    """Every unit of ours that is enabled must be active (a unit the node does not have, or one
    left disabled on purpose, such as keepalived with one load balancer, is not judged)."""
    out = []
    for n in cluster.nodes:
        found = answers.nodes.get(n.name, {}).get("services")
        if found is None:
            continue
        if err := _error(found):
            out.append(Row("services", n.name, FAIL, f"systemctl did not answer: {_first_line(err)}"))
            continue
        down = [f"{u} {state[0]} ({state[1]})" for u, state in found.items()
                if state[2] == "enabled" and state[0] != "active"]
        running = [u for u, state in found.items() if state[0] == "active"]
        if down:
            out.append(Row("services", n.name, FAIL, "enabled but not running: " + ", ".join(down)))
        else:
            out.append(Row("services", n.name, OK, (", ".join(running) or "none of ours") + " active"))
    return out


@dataclass(frozen=True)
class ClusterView:
    """The cluster as one master's kubectl read it, and that master's clock at the time."""

    master: str
    items: list[dict]
    time: float

    def of_kind(self, kind: str) -> list[dict]:
        return [i for i in self.items if i.get("kind") == kind]


def cluster_view(cluster: Cluster, answers: Answers) -> tuple[ClusterView | None, str]:
    """The first master (in the file's order) whose kubectl answered; else None and why not."""
    why = []
    for m in cluster.masters:
        a = answers.nodes.get(m.name)
        if a is None:
            why.append(f"{m.name}: no answer")
            continue
        read = a.get("cluster") or {"error": "not asked"}
        if err := _error(read):
            why.append(f"{m.name}: {_first_line(err, 100)}")
            continue
        return ClusterView(m.name, read.get("items", []), a.get("time", 0.0)), ""
    return None, "no master's kubectl answered (" + "; ".join(why) + ")"


def node_rows(cluster: Cluster, view: ClusterView | None, why: str = "") -> list[Row]:
    if view is None:
        return [Row("nodes", "every node", FAIL, f"unknown: {why}")]
    found = {i["metadata"]["name"]: i for i in view.of_kind("Node")}
    out = []
    for n in cluster.kubelet_nodes:
        item = found.pop(n.name, None)
        if item is None:
            out.append(Row("nodes", n.name, FAIL, "no Node object (its kubelet has not registered it)"))
            continue
        status = item.get("status", {})
        ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
        version = status.get("nodeInfo", {}).get("kubeletVersion", "?")
        if ready.get("status") != "True":
            said = ": ".join(x for x in (ready.get("reason"), _first_line(ready.get("message", ""), 120)) if x)
            state = f"Ready={ready.get('status', 'missing')}"
            out.append(Row("nodes", n.name, FAIL, f"{state}: {said}" if said else state))
        elif item.get("spec", {}).get("unschedulable"):
            out.append(Row("nodes", n.name, WARN, f"Ready, kubelet {version}, but cordoned (unschedulable)"))
        else:
            out.append(Row("nodes", n.name, OK, f"Ready, kubelet {version}"))
    out += [Row("nodes", name, WARN, "a Node the cluster file does not list") for name in sorted(found)]
    return out


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB" if size < 1024**3 else f"{size / 1024**3:.2f} GiB"


def etcd_rows(cluster: Cluster, answers: Answers) -> list[Row]:
    """One row per member that answered (its own status), then one for the cluster."""
    out = []
    members = cluster.etcd_members
    names: dict[int, str] = {}  # member id -> node
    leaders: dict[str, int] = {}  # node -> the leader it names
    healthy = []
    alarms: set[tuple[int, str]] = set()
    for m in members:
        a = answers.nodes.get(m.name)
        if a is None:
            continue  # the ssh row names it
        status = a.get("etcd_status") or {"error": "not asked"}
        if err := _error(status):
            out.append(Row("etcd", m.name, FAIL, f"the member does not answer: {_first_line(err)}"))
            continue
        s = status[0]["Status"]
        me, leader = s["header"]["member_id"], s.get("leader", 0)
        names[me] = m.name
        leaders[m.name] = leader
        quota = s.get("dbSizeQuota") or ETCD_DEFAULT_QUOTA
        size, in_use = s.get("dbSize", 0), s.get("dbSizeInUse", 0)
        detail = (f"{'leader' if me == leader else 'follower'}, db {_mib(size)} ({_mib(in_use)} in use) of "
                  f"{_mib(quota)}, etcd {s.get('version', '?')}")
        if s.get("errors"):
            out.append(Row("etcd", m.name, FAIL, "errors: " + "; ".join(s["errors"]) + f" ({detail})"))
        elif s.get("isLearner"):
            out.append(Row("etcd", m.name, WARN, f"a learner, not voting yet ({detail})"))
        elif size > ETCD_QUOTA_WARN * quota:
            healthy.append(m.name)
            out.append(Row("etcd", m.name, WARN, f"database above {ETCD_QUOTA_WARN:.0%} of its quota: {detail} "
                                                 "(compact and defragment, or raise --quota-backend-bytes)"))
        else:
            healthy.append(m.name)
            out.append(Row("etcd", m.name, OK, detail))
        listed = a.get("etcd_alarms") or {}
        if not _error(listed):
            for alarm in listed.get("alarms") or []:
                kind = alarm.get("alarm", 0)
                alarms.add((alarm.get("memberID", 0), ETCD_ALARMS.get(kind, str(kind))))
    quorum = len(members) // 2 + 1
    problems = []
    if len(healthy) < quorum:
        problems.append(f"no quorum: {len(healthy)} of {len(members)} members healthy, {quorum} needed")
    named = {leaders[n] for n in healthy if leaders.get(n)}
    if not named and healthy:
        problems.append("no leader")
    elif len(named) > 1:
        problems.append("the members name different leaders: " + ", ".join(
            f"{n} names {names.get(leaders[n], format(leaders[n], 'x'))}" for n in healthy))
    problems += [f"alarm {kind} on {names.get(mid, format(mid, 'x'))}" for mid, kind in sorted(alarms)]
    if problems:
        out.append(Row("etcd", "cluster", FAIL, "; ".join(problems)))
    else:
        leader = named.pop()
        out.append(Row("etcd", "cluster", OK, f"leader {names.get(leader, format(leader, 'x'))}, "
                                              f"{len(healthy)} of {len(members)} members healthy, no alarm"))
    return out


def readyz_row(check: str, subject: str, result: dict | None) -> Row:
    """A /readyz answer judged: "ok" with 200, else the failing checks it names."""
    if result is None:
        return Row(check, subject, FAIL, "not asked")
    if "status" not in result:
        return Row(check, subject, FAIL, f"does not answer: {_first_line(_error(result) or result)}")
    body = result.get("body", "")
    if result["status"] == 200 and body.strip() == "ok":
        return Row(check, subject, OK, "ready")
    failing = [line[3:].split(" failed")[0] for line in body.splitlines() if line.startswith("[-]")]
    return Row(check, subject, FAIL, f"/readyz {result['status']}: "
               + (f"failing {', '.join(failing)}" if failing else _first_line(body, 120)))


def apiserver_rows(cluster: Cluster, answers: Answers) -> list[Row]:
    out = []
    for m in cluster.masters:
        a = answers.nodes.get(m.name)
        if a is not None:
            out.append(readyz_row("apiserver", m.name, (a.get("readyz") or {}).get(local_readyz(m)[0])))
    for subject, url in entrance_urls(cluster).items():
        out.append(readyz_row("apiserver", subject, answers.entrance.get(url)))
    return out


def proxy_rows(cluster: Cluster, answers: Answers) -> list[Row]:
    return [readyz_row("api proxy", n.name, (answers.nodes[n.name].get("readyz") or {}).get(NODE_PROXY_READYZ))
            for n in cluster.kubelet_nodes if n.name in answers.nodes]


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def lease_rows(view: ClusterView | None, why: str = "") -> list[Row]:
    if view is None:
        return [Row("leases", name, FAIL, f"unknown: {why}") for name in LEASES]
    found = {i["metadata"]["name"]: i for i in view.of_kind("Lease")}
    now = dt.datetime.fromtimestamp(view.time, dt.UTC)
    out = []
    for name in LEASES:
        spec = found.get(name, {}).get("spec")
        if spec is None:
            out.append(Row("leases", name, FAIL, f"no Lease kube-system/{name}: no {name} was ever elected"))
            continue
        holder, renewed = spec.get("holderIdentity"), spec.get("renewTime")
        duration = spec.get("leaseDurationSeconds", 15)
        if not holder or not renewed:
            out.append(Row("leases", name, FAIL, f"no holder: no {name} leads"))
            continue
        node = holder.split("_")[0]
        age = max(0.0, (now - _parse_time(renewed)).total_seconds())
        if age > duration:
            out.append(Row("leases", name, FAIL, f"held by {node} but not renewed for {age:.0f} s "
                                                 f"(lease {duration} s): no {name} leads"))
        else:
            out.append(Row("leases", name, OK, f"held by {node}, renewed {age:.0f} s ago (lease {duration} s)"))
    return out


def dns_rows(cluster: Cluster, view: ClusterView | None, answers: Answers, why: str = "") -> list[Row]:
    out = []
    if view is None:
        out.append(Row("dns", f"{DNS_SERVICE} endpoints", FAIL, f"unknown: {why}"))
    else:
        ready, total = set(), set()
        for es in view.of_kind("EndpointSlice"):
            if es.get("metadata", {}).get("labels", {}).get("kubernetes.io/service-name") != DNS_SERVICE:
                continue
            for ep in es.get("endpoints") or []:
                addresses = tuple(ep.get("addresses", []))
                total.add(addresses)
                if (ep.get("conditions") or {}).get("ready") is not False:  # unset counts as ready (API docs)
                    ready.add(addresses)
        if not ready:
            out.append(Row("dns", f"{DNS_SERVICE} endpoints", FAIL, f"no ready endpoint of {len(total)}: "
                           "CoreDNS is not running (scaled to 0, or its pods fail)"))
        elif len(ready) < len(total):
            out.append(Row("dns", f"{DNS_SERVICE} endpoints", WARN, f"{len(ready)} of {len(total)} endpoints ready"))
        else:
            out.append(Row("dns", f"{DNS_SERVICE} endpoints", OK, f"{len(ready)} of {len(total)} endpoints ready"))
    want, answered, failed = str(cluster.api_service_ip), [], []
    for n in cluster.kubelet_nodes:
        a = (answers.nodes.get(n.name) or {}).get("dns")
        if a is None:
            continue
        if err := _error(a):
            failed.append(f"{n.name} ({err})")
        elif a.get("rcode") != 0:
            failed.append(f"{n.name} (rcode {a.get('rcode')}{', NXDOMAIN' if a.get('rcode') == 3 else ''})")
        elif want not in a.get("answers", []):
            failed.append(f"{n.name} (answered {', '.join(a.get('answers', [])) or 'nothing'}, not {want})")
        else:
            answered.append(n.name)
    subject = f"query {cluster.cluster_dns}"
    if failed and not answered:
        out.append(Row("dns", subject, FAIL, f"{dns_name(cluster)}: no answer on any node: " + "; ".join(failed)))
    elif failed:
        out.append(Row("dns", subject, WARN, f"{dns_name(cluster)} = {want} on {', '.join(answered)}; not on "
                       + "; ".join(failed) + " (see that node's pod network)"))
    elif answered:
        out.append(Row("dns", subject, OK, f"{dns_name(cluster)} = {want} on every node ({len(answered)})"))
    return out


def pod_network_rows(cluster: Cluster, answers: Answers) -> list[Row]:
    out = []
    for n in cluster.kubelet_nodes:
        a = answers.nodes.get(n.name)
        if a is None:
            continue
        peers = [p for p in cluster.kubelet_nodes if p.name != n.name]
        if cluster.cni == "weave":
            out.append(_weave_row(n, peers, a.get("weave") or {"error": "not asked"}))
        else:
            out.append(_routes_row(n, peers, a.get("routes") or []))
    return out


def _weave_row(node: Node, peers: list[Node], report: dict) -> Row:
    if err := _error(report):
        return Row("pod network", node.name, FAIL, f"its Weave Net router does not answer: {_first_line(err)}")
    by_ip: dict[str, list[dict]] = {}
    for c in report.get("Connections") or []:
        by_ip.setdefault(c.get("Address", "").rsplit(":", 1)[0], []).append(c)
    missing = []
    for p in peers:
        conns = by_ip.get(str(p.ip), [])
        if not any(c.get("State") == "established" for c in conns):
            said = "; ".join(f"{c.get('State')}: {c.get('Info', '')}".strip(": ") for c in conns) or "no connection"
            missing.append(f"{p.name} ({_first_line(said, 100)})")
    if missing:
        return Row("pod network", node.name, FAIL, "Weave Net not connected to " + ", ".join(missing))
    return Row("pod network", node.name, OK, f"Weave Net connected to every peer ({len(peers)})")


def _routes_row(node: Node, peers: list[Node], routes) -> Row:
    if err := _error(routes):
        return Row("pod network", node.name, FAIL, f"its routes could not be read: {_first_line(err)}")
    have = {dest: via for dest, via in routes}
    missing = [f"{p.name}'s pods {p.pod_cidr} via {p.ip}" + (f" (goes via {have[str(p.pod_cidr)]})"
                                                              if str(p.pod_cidr) in have else "")
               for p in peers if p.pod_cidr and have.get(str(p.pod_cidr)) != str(p.ip)]
    if missing:
        return Row("pod network", node.name, FAIL, "no route to " + ", ".join(missing))
    return Row("pod network", node.name, OK, f"routes to every other node's pod subnet ({len(peers)})")


def certificate_rows(cluster: Cluster, answers: Answers, within: int, now: dt.datetime) -> list[Row]:
    out = []
    for n in cluster.nodes:
        text = (answers.nodes.get(n.name) or {}).get("certs")
        if not n.holds_certificates or text is None:
            continue
        if err := _error(text):
            out.append(Row("certificates", n.name, FAIL, f"could not be read: {_first_line(err)}"))
            continue
        try:
            found = certs.rows({n.name: parse_host(text)}, now)
        except ValueError as exc:
            out.append(Row("certificates", n.name, FAIL, f"could not be read: {_first_line(str(exc))}"))
            continue
        if not found:
            out.append(Row("certificates", n.name, FAIL, "no certificate found"))
            continue
        due = certs.due(found, within)
        if due:
            listed = ", ".join(f"{r.path} ({r.what}, {r.days} days)" for r in due[:3])
            more = f" and {len(due) - 3} more" if len(due) > 3 else ""
            fix = "rerun the deploy" + (", rotate the CAs" if any(r.what.startswith("CA ") for r in due) else "")
            out.append(Row("certificates", n.name, FAIL, f"{len(due)} of {len(found)} expire within {within} days: "
                                                         f"{listed}{more} ({fix})"))
        else:
            soon = min(found, key=lambda r: r.days)
            out.append(Row("certificates", n.name, OK, f"{len(found)} certificates, none within {within} days (soonest "
                                                       f"{soon.what} in {soon.days} days)"))
    return out


# --------------------------------------------------------------------------- etcd snapshots


def local_snapshots(cluster: Cluster) -> list[Snapshot]:
    """The backups ``backup.py`` left in the operator's backup folder (the time is in the name)."""
    return [Snapshot(str(db), when) for db in available(cluster) if (when := snapshots.taken(db.name))]


def newest_snapshot(cluster: Cluster, extra: Iterable[Snapshot] = ()) -> Snapshot | None:
    """The newest etcd snapshot: of the operator's backups and ``extra`` (the masters' scheduled
    snapshots, and any found elsewhere)."""
    return max([*local_snapshots(cluster), *extra], key=lambda s: s.taken, default=None)


def master_snapshots(cluster: Cluster, answers: Answers) -> dict[str, list[Snapshot]]:
    """master -> the whole snapshots its probe listed, oldest first, each ``<master>:<name>`` (as
    restore.py names one). kthw.snapshots decides which names are whole and when each was taken.
    A master that did not answer, or could not list them, is left out."""
    held = {}
    for m in cluster.masters:
        names = (answers.nodes.get(m.name) or {}).get("snapshots")
        if names is None or _error(names):
            continue
        held[m.name] = [Snapshot(f"{m.name}:{n}", when) for n in snapshots.whole(names)
                        if (when := snapshots.taken(n))]
    return held


def schedule_window(cluster: Cluster) -> tuple[dt.timedelta, str] | None:
    """With the masters' timers on (``backup.scheduled``), how old the newest snapshot may get
    before it is a WARN, and that limit in words; None without them. One run missed is let pass,
    two are not: twice ``backup.every``, plus the timer's random delay (at most a tenth of
    ``every``: operations/snapshots.py) and a run's own time."""
    if not cluster.backup.scheduled:
        return None
    every = dt.timedelta(seconds=cluster.backup.seconds)
    window = 2 * every + every / 10 + SNAPSHOT_RUN_MARGIN
    return window, f"{_age(window)} (twice backup.every {cluster.backup.every}, and a margin)"


def _age(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // (24 * 60)} days {minutes // 60 % 24} h"


def snapshot_rows(newest: Snapshot | None, now: dt.datetime, max_age_hours: float | None,
                  window: tuple[dt.timedelta, str] | None = None) -> list[Row]:
    """No snapshot, or a too old one: WARN, unless ``--snapshot-max-age`` makes it a FAIL. Too old
    without it: beyond the schedule's ``window`` (:func:`schedule_window`), else a week."""
    limit = dt.timedelta(hours=max_age_hours) if max_age_hours is not None else None
    if newest is None:
        if limit is None:
            return [Row("snapshot", "etcd", WARN, "no etcd snapshot yet: take one with backup.py "
                                                  "(--snapshot-max-age HOURS makes this a failure)")]
        return [Row("snapshot", "etcd", FAIL, "no etcd snapshot: take one with backup.py")]
    age = now - newest.taken
    said = f"newest {_age(age)} old: {newest.where}"
    if limit is not None and age > limit:
        return [Row("snapshot", "etcd", FAIL, f"{said}, older than --snapshot-max-age {max_age_hours:g} h")]
    warn_after, in_words = window or (SNAPSHOT_WARN_AGE, f"{SNAPSHOT_WARN_AGE.days} days")
    if limit is None and age > warn_after:
        return [Row("snapshot", "etcd", WARN, f"{said}, older than {in_words}")]
    return [Row("snapshot", "etcd", OK, said)]


def _timer_enabled(answer: dict) -> bool:
    timer = (answer.get("services") or {}).get(SNAPSHOT_TIMER) or []
    return timer[2:3] == ["enabled"]


def master_snapshot_rows(cluster: Cluster, answers: Answers, held: dict[str, list[Snapshot]], now: dt.datetime,
                         window: tuple[dt.timedelta, str] | None) -> list[Row]:
    """WARN rows only: a master whose snapshots could not be listed; with the schedule on, a master
    whose timer is enabled but that holds no snapshot within the window. The other master's
    snapshots may keep the cluster's row OK: these say which master is behind."""
    out = []
    for m in cluster.masters:
        a = answers.nodes.get(m.name)
        if a is None:
            continue  # the ssh row names it
        if err := _error(a.get("snapshots")):
            out.append(Row("snapshot", m.name, WARN, f"{ETCD_SNAPSHOTS} could not be listed: {_first_line(err)}"))
        elif window and m.name in held and _timer_enabled(a):
            out += _behind(m.name, held[m.name], now, window)
    return out


def _behind(master: str, found: list[Snapshot], now: dt.datetime, window: tuple[dt.timedelta, str]) -> list[Row]:
    """A master's row when its newest snapshot is older than the window: its runs fail (its journal
    says why), or its timer has not had its first run yet (a deploy less than a window ago)."""
    newest = found[-1] if found else None
    if newest and now - newest.taken <= window[0]:
        return []
    had = f"its newest is {_age(now - newest.taken)} old: {newest.where}" if newest else "none there yet"
    return [Row("snapshot", master, WARN, f"timer enabled, but no snapshot within {window[1]}; {had} "
                                          f"(`journalctl -u {SNAPSHOT_SERVICE}` on it says why)")]


def snapshot_check(cluster: Cluster, answers: Answers, now: dt.datetime, max_age_hours: float | None) -> list[Row]:
    """The newest snapshot of all (the operator's backups, every master's, ``answers.snapshots``),
    then a row for each master that is behind its schedule."""
    held = master_snapshots(cluster, answers)
    extra = [*answers.snapshots, *(s for found in held.values() for s in found)]
    window = schedule_window(cluster)
    return [*snapshot_rows(newest_snapshot(cluster, extra), now, max_age_hours, window),
            *master_snapshot_rows(cluster, answers, held, now, window)]


# --------------------------------------------------------------------------- all of it


def _safely(check: str, judge: Callable[[], list[Row]]) -> list[Row]:
    """A check's rows; an answer it cannot read (a tool's output of another shape) is a FAIL
    row of that check, not a crash of the whole report."""
    try:
        return judge()
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        return [Row(check, "?", FAIL, f"an answer it could not read ({exc.__class__.__name__}: {_first_line(exc)})")]


def evaluate(cluster: Cluster, answers: Answers, now: dt.datetime, within: int,
             snapshot_max_age: float | None = None) -> list[Row]:
    """Every row, in the order of CHECKS."""
    view, why = cluster_view(cluster, answers)
    judges: dict[str, Callable[[], list[Row]]] = {
        "ssh": lambda: ssh_rows(cluster, answers),
        "services": lambda: service_rows(cluster, answers),
        "nodes": lambda: node_rows(cluster, view, why),
        "etcd": lambda: etcd_rows(cluster, answers),
        "apiserver": lambda: apiserver_rows(cluster, answers),
        "api proxy": lambda: proxy_rows(cluster, answers),
        "leases": lambda: lease_rows(view, why),
        "dns": lambda: dns_rows(cluster, view, answers, why),
        "pod network": lambda: pod_network_rows(cluster, answers),
        "certificates": lambda: certificate_rows(cluster, answers, within, now),
        "snapshot": lambda: snapshot_check(cluster, answers, now, snapshot_max_age),
    }
    assert tuple(judges) == CHECKS
    return [row for check, judge in judges.items() for row in _safely(check, judge)]


def report(rows: list[Row]) -> tuple[str, int]:
    """The table and a closing line; exit code 1 when any row failed."""
    w_check = max(len(r.check) for r in rows)
    w_subject = max(len(r.subject) for r in rows)
    lines = [f"{'CHECK':{w_check}}  {'SUBJECT':{w_subject}}  STATUS  DETAIL"]
    lines += [f"{r.check:{w_check}}  {r.subject:{w_subject}}  {r.status:6}  {r.detail}" for r in rows]
    counts = {s: sum(r.status == s for r in rows) for s in (OK, WARN, FAIL)}
    lines.append(f"{len(rows)} rows: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines), 1 if counts[FAIL] else 0


# --------------------------------------------------------------------------- gathering


def check_identity(cluster: Cluster, answers: Answers) -> None:
    """Every node that answered holds this cluster's CA (or none: a node not deployed yet), as
    the playbooks check before they act: a report on another cluster's machines would mislead."""
    other = []
    for n in cluster.nodes:
        held = (answers.nodes.get(n.name) or {}).get("identity")
        if held is None:
            continue
        name = CA_NAME if n.runs_kubelet else ETCD_CA_NAME
        if held not in known_trust(cluster.pki_dir, name):
            other.append(n.name)
    if other:
        raise HealthConfigError(
            f"{', '.join(other)} hold(s) another cluster's CA than {cluster.pki_dir}: this report would be about "
            "another cluster. Fix: check KTHW_CLUSTER and the nodes' addresses, or copy the running cluster's "
            "identity here first (`python -m kthw pki adopt`).")


def readyz(url: str, cadata: str) -> dict:
    """/readyz from the operator machine, anonymous, verified against the cluster's CA bundle."""
    try:
        ctx = ssl.create_default_context(cadata=cadata)
        with urllib.request.urlopen(url, timeout=5, context=ctx) as res:
            return {"status": res.status, "body": res.read().decode(errors="replace")[-1000:]}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")[-1000:]}
    except (OSError, ValueError) as exc:
        return {"error": str(getattr(exc, "reason", "") or exc) or exc.__class__.__name__}


Runner = Callable[[str, dict, str], bytes]  # (node, connection, command) -> stdout; raises SshError


def gather(cluster: Cluster, conns: dict[str, dict], run: Runner | None = None,
           ask: Callable[[str, str], dict] = readyz) -> Answers:
    """Every node's probe (one SSH command each) and the entrance's /readyz, all at once. A node
    without a connection (a stopped machine) or whose probe fails is named in ``unreachable``."""
    from kthw.ssh import SshError, as_root, ssh_run

    run = run or (lambda name, conn, cmd: ssh_run(name, conn, cmd, timeout=90))
    answers = Answers()
    for n in cluster.nodes:
        if n.name not in conns:
            answers.unreachable[n.name] = "not running (the inventory has no connection for it)"

    def probe(node: Node) -> tuple[str, dict | None, str]:
        conn = conns[node.name]
        try:
            out = run(node.name, conn, as_root(conn, probe_command(cluster, node)))
        except SshError as exc:
            return node.name, None, f"no answer: {exc}"
        try:
            return node.name, json.loads(out), ""
        except ValueError:
            return node.name, None, f"its answer is not JSON: {out[-200:]!r}"

    cadata = trust_bundle(cluster.pki_dir).decode()
    reachable = [n for n in cluster.nodes if n.name in conns]
    urls = list(entrance_urls(cluster).values())
    with ThreadPoolExecutor(len(reachable) + len(urls)) as pool:
        probes = [pool.submit(probe, n) for n in reachable]
        entrance = {u: pool.submit(ask, u, cadata) for u in urls}
        for future in probes:
            name, answer, why = future.result()
            if answer is None:
                answers.unreachable[name] = why
            else:
                answers.nodes[name] = answer
        answers.entrance = {u: f.result() for u, f in entrance.items()}
    return answers


def health(cluster: Cluster, within: int, snapshot_max_age: float | None = None,
           conns: dict[str, dict] | None = None, run: Runner | None = None,
           ask: Callable[[str, str], dict] = readyz) -> tuple[str, int]:
    """The checks before any node is asked (the local PKI, the inventory), the gathering, the
    identity check, then the table and its exit code. HealthConfigError: exit 2."""
    if not ca_path(cluster.pki_dir, CA_NAME).exists():
        raise HealthConfigError(f"{cluster.pki_dir} holds no PKI: without the cluster's CA neither the entrance's "
                                "certificate nor the nodes' identity can be checked. Fix: `python -m kthw pki adopt` "
                                "(copies the running cluster's identity here), or check KTHW_CLUSTER.")
    if conns is None:
        from kthw.inventory import InventoryError, connections

        try:
            conns = connections(cluster, needed=lambda n: False)  # a machine that is down is reported
        except InventoryError as exc:
            raise HealthConfigError(str(exc)) from None
    answers = gather(cluster, conns, run, ask)
    check_identity(cluster, answers)
    return report(evaluate(cluster, answers, dt.datetime.now(dt.UTC), within, snapshot_max_age))
