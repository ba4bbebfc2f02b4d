"""What cluster.yaml must mean, beyond its schema: the checks that need more than one key.

Each check takes the validated file (kthw.model.ClusterFile) and the pod subnets the last deploy
recorded (kthw.podsubnets), and returns its problems (the file is refused) and warnings (the file is
used, the warning is shown). :func:`semantic_checks` runs :data:`CHECKS` in order; the order is the
order problems are reported in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network
from itertools import islice
from typing import TYPE_CHECKING

from kthw.model_errors import MISSING, Problem
from kthw.podsubnets import default_pod_cidrs

if TYPE_CHECKING:
    from kthw.model import ClusterFile, NetworkSection, NodeSection

Recorded = Mapping[str, IPv4Network] | None
Found = tuple[list[Problem], list[str]]  # (problems, warnings)
Check = Callable[["ClusterFile", Recorded], Found]

_SOURCE_OF = {"mirror_url": "mirror", "directory": "directory", "checksums": "mirror or directory"}


def roles_present(spec: ClusterFile, recorded: Recorded) -> Found:
    """One load balancer, at least one master and one worker: one HAProxy in front of N masters, M workers."""
    p: list[Problem] = []
    roles = Counter(n.role for n in spec.nodes)
    if roles["master"] == 0:
        p.append(Problem("nodes", MISSING, "has no node with role: master",
                         "add at least one master (etcd and the control plane run there)"))
    if roles["worker"] == 0:
        p.append(Problem("nodes", MISSING, "has no node with role: worker",
                         "add at least one worker (pods run there)"))
    if roles["loadbalancer"] not in (1, 2):
        p.append(Problem("nodes", MISSING,
                         f"has {roles['loadbalancer']} nodes with role: loadbalancer, "
                         "the design needs one (or two sharing network.api_vip)",
                         "keep one loadbalancer node (HAProxy in front of every apiserver), or two "
                         "with a virtual IP in network.api_vip"))
    return p, []


def api_vip(spec: ClusterFile, recorded: Recorded) -> Found:
    """network.api_vip comes with exactly two load balancers, and is a free address of the node
    network (keepalived moves it between them)."""
    vip, net = spec.network.api_vip, spec.network.nodes
    lbs = sum(n.role == "loadbalancer" for n in spec.nodes)
    if vip is None:
        if lbs == 2:
            return [Problem("network.api_vip", MISSING, "is needed with two load balancers",
                            f"give them a free address of {net} to share, e.g. {_free_address(spec)}")], []
        return [], []
    key = "network.api_vip"
    if lbs != 2:
        return [Problem(key, str(vip), f"needs two nodes with role: loadbalancer, the file has {lbs}",
                        "add a second load balancer, or remove network.api_vip")], []
    if vip not in net or vip in (net.network_address, net.broadcast_address, net.network_address + 1):
        return [Problem(key, str(vip), f"is not a free host address of network.nodes ({net}) (.1 is the "
                        "Vagrant host's)", f"pick an unused address inside {net}, e.g. {_free_address(spec)}")], []
    if taken := [n.name for n in spec.nodes if n.ip == vip]:
        return [Problem(key, str(vip), f"is {taken[0]}'s address",
                        f"pick an address no node uses, e.g. {_free_address(spec)}")], []
    return [], []


def _free_address(spec: ClusterFile):
    used = {n.ip for n in spec.nodes}
    net = spec.network.nodes
    return next((a for a in islice(net.hosts(), 9, None) if a not in used), "another address")


def etcd_quorum(spec: ClusterFile, recorded: Recorded) -> Found:
    """An etcd-only member goes on a load balancer, once, and only where it makes the member count
    odd; an even count of members is warned of (quorum then survives no more losses than one
    member fewer)."""
    p: list[Problem] = []
    masters = sum(n.role == "master" for n in spec.nodes)
    extra = [(i, n) for i, n in enumerate(spec.nodes) if n.etcd]
    for i, n in extra:
        key = f"nodes[{i}] ({n.name}).etcd"
        if n.role != "loadbalancer":
            p.append(Problem(key, "true", f"is only meaningful on a load balancer ({n.role}s "
                             + ("always run etcd)" if n.role == "master" else "never run etcd)"),
                             "remove it from this node"))
        elif masters % 2:
            p.append(Problem(key, "true", f"would make {masters + 1} etcd members with {masters} masters: an even "
                             f"count, whose quorum ({(masters + 1) // 2 + 1}) survives no more losses than "
                             f"{masters} members", "remove it: the etcd-only member is for an even count of masters"))
    if len(extra) > 1:
        p.append(Problem("nodes[].etcd", "true", f"is set on {len(extra)} nodes",
                         "set it on one load balancer only (the one third vote)"))
    members = masters + len(extra)
    if p or not masters or members % 2:
        return p, []
    return p, [
        f"{masters} masters make an etcd cluster of {masters} members: "
        f"quorum is {masters // 2 + 1}, so it tolerates no more member losses than "
        f"{masters - 1} members would. Use an odd number (3) to survive losing one, or give the "
        "load balancer an etcd-only member (etcd: true on its entry)."
        if masters > 2 else
        f"{masters} masters make a 2-member etcd cluster (the reference design): quorum is 2, "
        "so losing either master stops all writes. Give the load balancer an etcd-only member "
        "(etcd: true on its entry) or use 3 masters to survive losing one."
    ]


def unique_names_and_ips(spec: ClusterFile, recorded: Recorded) -> Found:
    """No two nodes share a name or an address (both name hosts, certificates and inventory entries)."""
    p: list[Problem] = []
    for field in ("name", "ip"):
        counts = Counter(str(getattr(n, field)) for n in spec.nodes)
        for value, count in counts.items():
            if count > 1:
                p.append(Problem(f"nodes[].{field}", value, f"is used by {count} nodes",
                                 f"give every node its own {field}"))
    return p, []


def networks_disjoint(spec: ClusterFile, recorded: Recorded) -> Found:
    """The node, pod and service networks do not overlap: routing (and kube-proxy's rules) would be ambiguous."""
    net = spec.network
    p: list[Problem] = []
    nets = {"network.nodes": net.nodes, "network.pods": net.pods, "network.services": net.services}
    keys = list(nets)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if nets[a].overlaps(nets[b]):
                p.append(Problem(b, str(nets[b]), f"overlaps {a} ({nets[a]})",
                                 "choose ranges that do not share any address"))
    return p, []


def node_entries(spec: ClusterFile, recorded: Recorded) -> Found:
    """Each node's own keys fit the networks: its ip, its pod_cidr, its ssh key (problems in node order)."""
    p: list[Problem] = []
    for i, n in enumerate(spec.nodes):
        where = f"nodes[{i}] ({n.name})"
        found = (_node_ip(where, n, spec.network), _node_pod_cidr(where, n, spec.network), _ssh_key(where, n))
        p += [problem for problem in found if problem]
    return p, []


def _node_ip(where: str, n: NodeSection, net: NetworkSection) -> Problem | None:
    """A node's address is a host address of network.nodes that the Vagrant host (.1) does not take."""
    key = f"{where}.ip"
    if n.ip not in net.nodes:
        return Problem(key, str(n.ip), f"is outside network.nodes ({net.nodes})",
                       f"pick an address inside {net.nodes} or change network.nodes")
    if n.ip in (net.nodes.network_address, net.nodes.broadcast_address):
        return Problem(key, str(n.ip), "is the network or broadcast address of network.nodes",
                       "pick a host address")
    if n.ip == net.nodes.network_address + 1:
        return Problem(key, str(n.ip),
                       "is the first address of network.nodes, which the machine running "
                       "Vagrant (or the lab bridge) takes", "pick another address, like .11")
    return None


def _node_pod_cidr(where: str, n: NodeSection, net: NetworkSection) -> Problem | None:
    """A pod_cidr given is on a Kubernetes node, inside network.pods, of network.pod_subnet_prefix."""
    if n.pod_cidr is None:
        return None
    pkey = f"{where}.pod_cidr"
    if n.role not in ("master", "worker"):
        return Problem(pkey, str(n.pod_cidr), "is only meaningful on masters and workers "
                       "(Kubernetes nodes)", "remove it from this node")
    if not n.pod_cidr.subnet_of(net.pods):
        return Problem(pkey, str(n.pod_cidr), f"is not inside network.pods ({net.pods})",
                       f"pick a /{net.pod_subnet_prefix} inside {net.pods}")
    if n.pod_cidr.prefixlen != net.pod_subnet_prefix:
        return Problem(pkey, str(n.pod_cidr),
                       f"is not a /{net.pod_subnet_prefix} (network.pod_subnet_prefix)",
                       f"use a /{net.pod_subnet_prefix}")
    return None


def _ssh_key(where: str, n: NodeSection) -> Problem | None:
    """An ssh key given is a path, not an empty string."""
    if n.ssh is not None and n.ssh.key is not None and n.ssh.key.strip() == "":
        return Problem(f"{where}.ssh.key", n.ssh.key, "is empty",
                       "give a path to a private key, or remove the key")
    return None


def pod_subnets_fit(spec: ClusterFile, recorded: Recorded) -> Found:
    """network.pods holds one /pod_subnet_prefix per master and worker, and no two nodes share one."""
    net = spec.network
    if net.pod_subnet_prefix <= net.pods.prefixlen:
        return [Problem("network.pod_subnet_prefix", net.pod_subnet_prefix,
                        f"must be longer than the prefix of network.pods (/{net.pods.prefixlen})",
                        f"use a value above {net.pods.prefixlen}, like 24")], []
    roles = Counter(n.role for n in spec.nodes)
    slots = 2 ** (net.pod_subnet_prefix - net.pods.prefixlen)
    kube_nodes = roles["worker"] + roles["master"]
    if kube_nodes > slots:
        return [Problem("network.pod_subnet_prefix", net.pod_subnet_prefix,
                        f"gives only {slots} per-node subnets in {net.pods} "
                        f"for {kube_nodes} Kubernetes nodes ({roles['master']} masters, "
                        f"{roles['worker']} workers)",
                        "widen network.pods or lengthen pod_subnet_prefix")], []
    return _shared_pod_cidrs(spec, recorded), []


def _shared_pod_cidrs(spec: ClusterFile, recorded: Recorded) -> list[Problem]:
    """No pod subnet, given or defaulted (kthw.podsubnets), goes to two nodes."""
    taken: Counter[str] = Counter()
    for n, default in zip(spec.nodes, default_pod_cidrs(spec, recorded), strict=True):
        if n.role in ("master", "worker"):
            taken[str(n.pod_cidr or default)] += 1
    return [Problem("nodes[].pod_cidr", cidr, f"is given to {count} nodes",
                    "give each node its own pod_cidr, or leave them all to the default")
            for cidr, count in taken.items() if count > 1]


def service_network(spec: ClusterFile, recorded: Recorded) -> Found:
    """The API service takes network.services' .1; CoreDNS needs its own address there; the range has room."""
    net = spec.network
    p: list[Problem] = []
    api_ip = net.services.network_address + 1
    if net.cluster_dns not in net.services:
        p.append(Problem("network.cluster_dns", str(net.cluster_dns),
                         f"is outside network.services ({net.services})",
                         f"pick an address inside {net.services}, "
                         f"conventionally .10 ({net.services.network_address + 10})"))
    elif net.cluster_dns in (net.services.network_address, net.services.broadcast_address, api_ip):
        p.append(Problem("network.cluster_dns", str(net.cluster_dns),
                         f"collides with the network/broadcast address or the API service IP ({api_ip})",
                         f"use another address, conventionally {net.services.network_address + 10}"))
    if net.services.prefixlen > 28:
        p.append(Problem("network.services", str(net.services), "is too small for a cluster's services",
                         "use a /24 or wider, like 10.96.0.0/16"))
    return p, []


def artifact_source(spec: ClusterFile, recorded: Recorded) -> Found:
    """Where the binaries come from is complete, and no key is set that the chosen source would ignore."""
    a = spec.artifacts
    p: list[Problem] = []
    if a.source == "mirror" and not a.mirror_url:
        p.append(Problem("artifacts.mirror_url", MISSING, "is required with artifacts.source: mirror",
                         "set it to the mirror's base URL"))
    if a.source == "directory" and not a.directory:
        p.append(Problem("artifacts.directory", MISSING, "is required with artifacts.source: directory",
                         "set it to the folder holding the release files"))
    if a.source == "upstream":
        for extra in ("mirror_url", "directory", "checksums"):
            if getattr(a, extra):
                p.append(Problem(f"artifacts.{extra}", getattr(a, extra),
                                 "is set but artifacts.source is upstream, so it would be ignored",
                                 f"set artifacts.source to {_SOURCE_OF[extra]} or remove it"))
    elif "verify" in a.model_fields_set:
        # verify chooses how upstream files are trusted; a mirror or directory is always checked
        # against its own list, so accepting the key there would silently mean nothing.
        p.append(Problem("artifacts.verify", a.verify,
                         f"only applies to artifacts.source: upstream, not {a.source} (whose files are "
                         "always checked against its own checksum list, artifacts.checksums)",
                         "remove it"))
    return p, []


def plain_http_mirrors(spec: ClusterFile, recorded: Recorded) -> Found:
    """Warns of a registry mirror or release mirror over plain http: what comes through it can be swapped."""
    a = spec.artifacts
    warnings: list[str] = []
    for registry, urls in a.registry_mirrors.items():
        for url in urls:
            if url.startswith("http://"):
                warnings.append(
                    f"artifacts.registry_mirrors.{registry}: {url} is plain http: an image pulled through it by "
                    "tag can be replaced on the way (containerd checks an image's digest only when it is pulled "
                    "by digest). Serve the mirror over https, unless the network to it is trusted.")
    if a.source == "mirror" and (a.mirror_url or "").startswith("http://"):
        warnings.append(f"artifacts.mirror_url: {a.mirror_url} is plain http: only release files that "
                        "kthw/checksums/upstream-amd64.sha256 (or the lock) pins are accepted from it.")
    return [], warnings


def pki_validity(spec: ClusterFile, recorded: Recorded) -> Found:
    """Leaf certificates are renewed before they expire, not on every run, and do not outlive the CA."""
    pki = spec.pki
    p: list[Problem] = []
    if pki.renew_before_days >= pki.cert_validity_days:
        p.append(Problem("pki.renew_before_days", pki.renew_before_days,
                         f"is not shorter than pki.cert_validity_days ({pki.cert_validity_days}), "
                         "so every run would re-issue every certificate",
                         "make it a fraction of the validity, like 30"))
    if pki.cert_validity_days > pki.ca_validity_days:
        p.append(Problem("pki.cert_validity_days", pki.cert_validity_days,
                         f"outlives the CA (pki.ca_validity_days = {pki.ca_validity_days})",
                         "keep leaf certificates shorter-lived than the CA"))
    return p, []


# A snapshot interval's allowed values: the divisors of an hour (in minutes) and of a day (in hours).
_MINUTES = [m for m in range(1, 60) if 60 % m == 0]
_HOURS = [h for h in range(1, 25) if 24 % h == 0]


def backup_schedule(spec: ClusterFile, recorded: Recorded) -> Found:
    """backup.every divides an hour (minutes) or a day (hours): the snapshots then fall on the
    same times of the clock every day, which a systemd calendar timer can say (and catch up on
    after the machine was off, Persistent=true)."""
    every = spec.backup.every
    number, unit = int(every.rstrip("minh")), "min" if every.endswith("min") else "h"
    allowed, whole = (_MINUTES, "an hour") if unit == "min" else (_HOURS, "a day")
    if number in allowed:
        return [], []
    if unit == "min" and number % 60 == 0 and number // 60 in _HOURS:
        fix = f"write it in hours: {number // 60}h"
    else:
        fix = f"use one of {', '.join(f'{n}{unit}' for n in allowed)}"
        fix += (", or hours (1h to 24h)" if unit == "min" else ", or minutes (1min to 30min)")
    return [Problem("backup.every", every, f"does not divide {whole} evenly", fix)], []


# In the order their problems (and warnings) are reported.
CHECKS: list[Check] = [
    roles_present,
    api_vip,
    etcd_quorum,
    unique_names_and_ips,
    networks_disjoint,
    node_entries,
    pod_subnets_fit,
    service_network,
    artifact_source,
    plain_http_mirrors,
    pki_validity,
    backup_schedule,
]


def semantic_checks(spec: ClusterFile, recorded: Recorded = None) -> Found:
    """Every check of :data:`CHECKS` on ``spec``: all their problems and warnings, in order."""
    problems: list[Problem] = []
    warnings: list[str] = []
    for check in CHECKS:
        found, warned = check(spec, recorded)
        problems += found
        warnings += warned
    return problems, warnings
