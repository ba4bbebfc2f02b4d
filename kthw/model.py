"""The cluster model: load ``cluster.yaml``, validate it, derive what the rest needs.

Everything downstream (Vagrantfile, inventory, PKI, kubeconfigs, operations) reads the
cluster through :class:`Cluster`; nothing re-derives addresses on its own.

Validation runs before any host is touched. Every problem is reported at once, each naming
the key, the bad value and how to fix it::

    >>> load_cluster("cluster.yaml").api_server_url
    'https://192.168.56.30:6443'
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLUSTER_FILE = REPO_ROOT / "cluster.yaml"
# KTHW_CLUSTER picks another model file (the lab's second topology, a user's own cluster).
CLUSTER_ENV = "KTHW_CLUSTER"
API_PORT = 6443

Role = Literal["loadbalancer", "master", "worker"]
Cni = Literal["weave", "bridge"]
# Release versions as the upstream projects tag them: v1.36.3
Version = Annotated[str, StringConstraints(strict=True, pattern=r"^v\d+\.\d+\.\d+$")]
# The pause image is tagged without a leading v and without a patch level: 3.10
ShortVersion = Annotated[str, StringConstraints(strict=True, pattern=r"^\d+\.\d+(\.\d+)?$")]
# DNS-1123 label: node names become hostnames, certificate SANs and Kubernetes node names.
NodeName = Annotated[
    str, StringConstraints(strict=True, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
]


# A DNS name (the cluster domain): dot-separated DNS-1123 labels, no empty label.
DnsName = Annotated[str, StringConstraints(
    strict=True, max_length=253,
    pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")]


class _Section(BaseModel):
    # extra="forbid" turns every typo into an error instead of a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterSection(_Section):
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    domain: DnsName = "cluster.local"


class NetworkSection(_Section):
    nodes: IPv4Network = IPv4Network("192.168.56.0/24")
    pods: IPv4Network = IPv4Network("10.244.0.0/16")
    pod_subnet_prefix: Annotated[int, Field(ge=8, le=28)] = 24
    services: IPv4Network = IPv4Network("10.96.0.0/16")
    cluster_dns: IPv4Address = IPv4Address("10.96.0.10")


class SshSection(_Section):
    """How to reach a node that Vagrant did not make (static inventory). Host and user reach an
    ``ssh`` command line and a remote shell: a value starting with "-" (an ssh option such as
    -oProxyCommand=...) or holding a space, quote or shell character is refused."""

    host: Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,252}[A-Za-z0-9])?$")]
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    user: Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "root"
    key: str | None = None


class NodeSection(_Section):
    name: NodeName
    role: Role
    ip: IPv4Address
    cpus: Annotated[int, Field(ge=1, le=64)] = 1
    memory: Annotated[int, Field(ge=256, le=262144)] = 1024  # MiB
    pod_cidr: IPv4Network | None = None  # masters and workers; default: the node's slot in network.pods
    ssh: SshSection | None = None


class VersionsSection(_Section):
    kubernetes: Version
    etcd: Version
    containerd: Version
    runc: Version
    cni_plugins: Version
    crictl: Version
    coredns: Version
    weave: Version
    pause: ShortVersion


# A registry as image references name it: registry.k8s.io, docker.io, myregistry:5000
RegistryHost = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:\d{1,5})?$")]
# A mirror endpoint: scheme, host[:port], optional path (containerd appends /v2 to it).
MirrorUrl = Annotated[str, StringConstraints(strict=True, pattern=r"^https?://[^\s/\"]+(/[^\s\"]*)?$")]


class ArtifactsSection(_Section):
    source: Literal["upstream", "mirror", "directory"] = "upstream"
    mirror_url: Annotated[str, StringConstraints(pattern=r"^(https?|file)://\S+$")] | None = None
    directory: str | None = None
    checksums: str | None = None
    images: str | None = None
    cache_dir: str = "~/.cache/kthw/artifacts"
    # source: upstream only (a mirror or directory always needs its own checksum list).
    # first-use: a file the committed table kthw/checksums/upstream-amd64.sha256 does not pin is
    #   checked against the sha256 its project publishes beside the release (over https), and that
    #   value is recorded in kthw/checksums/upstream-amd64.lock, which every later run must match.
    # pinned: refuse any file the committed table does not pin (no trust on first use).
    verify: Literal["first-use", "pinned"] = "first-use"
    # Pull-through mirrors containerd asks first, in order, for images of a registry (then the
    # registry itself): {registry.k8s.io: [http://mirror.lan:5000]}. Written to
    # /etc/containerd/certs.d/<registry>/hosts.toml on every node; http:// is plain HTTP.
    registry_mirrors: dict[RegistryHost, Annotated[list[MirrorUrl], Field(min_length=1)]] = {}

    def __hash__(self) -> int:  # frozen, but holds a dict: hash its JSON (the model is cached by value)
        return hash(self.model_dump_json())


# A key of a component's YAML configuration (KubeletConfiguration, KubeProxyConfiguration).
ConfigKey = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-zA-Z][a-zA-Z0-9]*$")]
# A command-line flag without its dashes, and its value (one word: it goes into a unit's ExecStart).
FlagName = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z0-9][a-z0-9-]*$")]
FlagValue = Annotated[
    str,
    BeforeValidator(lambda v: str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, int | float) else v),
    # (no % or $ either: systemd would expand them in ExecStart)
    StringConstraints(pattern=r"^[^\s'\"\\%$]+$"),
]


class ExtraArgsSection(_Section):
    """The user's side of each component's settings (kthw/flags.py merges them with the deploy's
    defaults): {kube_apiserver: {v: 2}} runs kube-apiserver with --v=2 in place of --v=1, a
    ``null`` value removes a default flag; kubelet and kube_proxy keys go into their config files."""

    etcd: dict[FlagName, FlagValue | None] = {}
    kube_apiserver: dict[FlagName, FlagValue | None] = {}
    kube_controller_manager: dict[FlagName, FlagValue | None] = {}
    kube_scheduler: dict[FlagName, FlagValue | None] = {}
    kubelet: dict[ConfigKey, Any] = {}
    kube_proxy: dict[ConfigKey, Any] = {}

    def __hash__(self) -> int:  # frozen, but holds dicts: hash its JSON (the model is cached by value)
        return hash(self.model_dump_json())


class PkiSection(_Section):
    key_type: Literal["rsa-2048", "rsa-4096", "ecdsa-p256"] = "rsa-2048"
    ca_validity_days: Annotated[int, Field(ge=1)] = 3650
    cert_validity_days: Annotated[int, Field(ge=1)] = 365
    renew_before_days: Annotated[int, Field(ge=0)] = 30


class ClusterFile(_Section):
    """The schema of cluster.yaml, key by key."""

    cluster: ClusterSection
    network: NetworkSection = NetworkSection()
    cni: Cni = "weave"
    nodes: list[NodeSection]
    versions: VersionsSection
    artifacts: ArtifactsSection = ArtifactsSection()
    pki: PkiSection = PkiSection()
    extra_args: ExtraArgsSection = ExtraArgsSection()
    # Generated PKI, kubeconfigs and lab state on the operator machine, relative to this file.
    state_dir: str = ".kthw"


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    key: str
    value: Any
    problem: str
    fix: str

    def __str__(self) -> str:
        shown = "" if self.value is _MISSING else f" = {self.value!r}"
        return f"{self.key}{shown}: {self.problem}. Fix: {self.fix}."


_MISSING = object()


class ClusterConfigError(Exception):
    """cluster.yaml is not usable; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s), nothing was changed on any host:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    ip: IPv4Address
    cpus: int
    memory: int
    pod_cidr: IPv4Network | None
    ssh: SshSection | None

    @property
    def is_master(self) -> bool:
        return self.role == "master"

    @property
    def is_worker(self) -> bool:
        return self.role == "worker"

    @property
    def runs_kubelet(self) -> bool:
        """Masters and workers are Kubernetes nodes (masters tainted: control plane only)."""
        return self.role in ("master", "worker")


@dataclass(frozen=True)
class Cluster:
    """The validated cluster with the values derived from it."""

    name: str
    domain: str
    node_network: IPv4Network
    pod_network: IPv4Network
    pod_subnet_prefix: int
    service_network: IPv4Network
    cluster_dns: IPv4Address
    cni: str
    nodes: tuple[Node, ...]
    versions: VersionsSection
    artifacts: ArtifactsSection
    pki: PkiSection
    extra_args: ExtraArgsSection
    state_dir: Path
    source: Path
    warnings: tuple[str, ...] = ()

    # -- groups, in file order (the inventory keeps the same order)
    @cached_property
    def masters(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role == "master")

    @cached_property
    def workers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role == "worker")

    @cached_property
    def kubelet_nodes(self) -> tuple[Node, ...]:
        """Every Kubernetes node (kubelet, kube-proxy, the CNI): masters and workers."""
        return tuple(n for n in self.nodes if n.runs_kubelet)

    @cached_property
    def loadbalancer(self) -> Node:
        return next(n for n in self.nodes if n.role == "loadbalancer")

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} in {self.source}")

    # -- derived addresses
    @property
    def api_service_ip(self) -> IPv4Address:
        """The `kubernetes` Service's ClusterIP: the first address of the service CIDR."""
        return self.service_network.network_address + 1

    @property
    def api_server_url(self) -> str:
        """What everything off the masters talks to: HAProxy on the load balancer."""
        return f"https://{self.loadbalancer.ip}:{API_PORT}"

    @property
    def local_api_server_url(self) -> str:
        """What components on a master talk to: their own apiserver."""
        return f"https://127.0.0.1:{API_PORT}"

    @property
    def etcd_initial_cluster(self) -> str:
        return ",".join(f"{m.name}=https://{m.ip}:2380" for m in self.masters)

    @property
    def etcd_servers(self) -> str:
        return ",".join(f"https://{m.ip}:2379" for m in self.masters)

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig_dir(self) -> Path:
        return self.state_dir / "kubeconfigs"


# --------------------------------------------------------------------------- loading


def cluster_file_from_env() -> Path:
    return Path(os.environ.get(CLUSTER_ENV) or DEFAULT_CLUSTER_FILE)


def load_cluster(path: str | os.PathLike | None = None) -> Cluster:
    """Read and validate a cluster file (default: $KTHW_CLUSTER or ./cluster.yaml)."""
    path = Path(path) if path is not None else cluster_file_from_env()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ClusterConfigError(
            str(path),
            [Problem("(file)", str(path), f"cannot be read ({exc.strerror})",
                     f"create it or point {CLUSTER_ENV} at an existing cluster file")],
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ClusterConfigError(
            str(path),
            [Problem("(file)", _MISSING, f"is not valid YAML at {where}: {getattr(exc, 'problem', exc)}",
                     "correct the YAML syntax there")],
        ) from None
    return parse_cluster(raw, source=path)


def parse_cluster(raw: Any, source: Path | str = "cluster.yaml") -> Cluster:
    """Validate an already-parsed mapping (tests build these directly)."""
    source = Path(source)
    if not isinstance(raw, dict):
        raise ClusterConfigError(
            str(source),
            [Problem("(file)", _MISSING, "must be a mapping of sections (cluster, network, nodes, ...)",
                     "start from the cluster.yaml shipped in the repository")],
        )
    try:
        spec = ClusterFile.model_validate(raw)
    except ValidationError as exc:
        raise ClusterConfigError(str(source), _schema_problems(exc, raw)) from None

    state_dir = Path(os.path.expanduser(os.environ.get("KTHW_STATE_DIR") or spec.state_dir))
    if not state_dir.is_absolute():
        state_dir = Path(os.path.normpath(source.resolve().parent / state_dir))
    recorded = recorded_pod_subnets(state_dir / spec.cluster.name)
    problems, warnings = _semantic_checks(spec, recorded)
    if problems:
        raise ClusterConfigError(str(source), problems)

    auto = _pod_cidrs(spec, recorded)
    nodes = []
    for n, default in zip(spec.nodes, auto, strict=True):
        pod_cidr = n.pod_cidr or default
        nodes.append(Node(n.name, n.role, n.ip, n.cpus, n.memory, pod_cidr, n.ssh))
    cluster = Cluster(
        name=spec.cluster.name,
        domain=spec.cluster.domain,
        node_network=spec.network.nodes,
        pod_network=spec.network.pods,
        pod_subnet_prefix=spec.network.pod_subnet_prefix,
        service_network=spec.network.services,
        cluster_dns=spec.network.cluster_dns,
        cni=spec.cni,
        nodes=tuple(nodes),
        versions=spec.versions,
        artifacts=spec.artifacts,
        pki=spec.pki,
        extra_args=spec.extra_args,
        state_dir=state_dir / spec.cluster.name,
        source=source,
        warnings=tuple(warnings),
    )
    from kthw.flags import removal_problems  # (the flags are made from a built cluster)

    if bad := removal_problems(cluster):
        raise ClusterConfigError(str(source), [
            Problem(key, None, f"removes --{flag}, but the deploy does not set that flag",
                    "drop the key, or give it a value to add the flag") for key, flag in bad])
    return cluster


def _pod_cidrs(spec: ClusterFile, recorded: Mapping[str, IPv4Network] | None = None) -> list[IPv4Network | None]:
    """Each Kubernetes node's default pod subnet. A subnet the deploy recorded for the node
    (:func:`record_pod_subnets`) stays with it; any other node takes the first free slot of
    network.pods: workers from the first one up, masters from the last one down. So adding or
    removing a node never moves another node's subnet (its routes and running pods keep working)."""
    net = spec.network
    size = 2 ** (32 - net.pod_subnet_prefix)
    count = 2 ** (net.pod_subnet_prefix - net.pods.prefixlen)
    base = int(net.pods.network_address)
    slot = lambda i: IPv4Network((base + i * size, net.pod_subnet_prefix))  # noqa: E731
    kube = [n for n in spec.nodes if n.role in ("worker", "master")]
    # a record from another network.pods or prefix no longer fits: those nodes start over
    kept = {n.name: recorded[n.name] for n in kube if n.name in (recorded or {})
            and recorded[n.name].subnet_of(net.pods) and recorded[n.name].prefixlen == net.pod_subnet_prefix}
    taken = set(kept.values()) | {n.pod_cidr for n in kube if n.pod_cidr}
    free = {"worker": (slot(i) for i in range(count)), "master": (slot(i) for i in reversed(range(count)))}
    out: list[IPv4Network | None] = []
    for n in spec.nodes:  # by position in nodes[] for newcomers (names are checked elsewhere)
        if n.role not in free:
            out.append(None)
        elif n.name in kept:  # (a name given twice, an error reported elsewhere, keeps it once)
            out.append(kept.pop(n.name))
        else:
            choice = next((s for s in free[n.role] if s not in taken), slot(0))  # full: the count check says so
            taken.add(choice)
            out.append(choice)
    return out


POD_SUBNETS = "pod-subnets.yaml"


def recorded_pod_subnets(state_dir: Path) -> dict[str, IPv4Network]:
    """{node: pod subnet} as the last deploy recorded them (empty before the first)."""
    try:
        raw = yaml.safe_load((state_dir / POD_SUBNETS).read_text()) or {}
        return {str(k): IPv4Network(v) for k, v in raw.items()}
    except (OSError, yaml.YAMLError, ValueError, TypeError, AttributeError):
        return {}


def pod_subnets(cluster: Cluster) -> dict[str, str]:
    """{node: pod subnet} of every Kubernetes node."""
    return {n.name: str(n.pod_cidr) for n in cluster.kubelet_nodes if n.pod_cidr}


def pod_subnets_text(subnets: Mapping[str, str]) -> str:
    """The record as the operator machine and the masters keep it (YAML, sorted)."""
    return ("# Pod subnet of each node, kept by the deploy (kthw/model.py record_pod_subnets).\n"
            + yaml.safe_dump(dict(subnets), sort_keys=True))


def moved_pod_subnets(held: str | None, cluster: Cluster) -> dict[str, tuple[str, str]]:
    """{node: (recorded, planned)} for every node whose recorded pod subnet (the text a master
    holds) differs from what ``cluster`` gives it; nodes new or gone do not count."""
    try:
        recorded = {str(k): str(v) for k, v in (yaml.safe_load(held or "") or {}).items()}
    except (yaml.YAMLError, AttributeError):
        return {}
    planned = pod_subnets(cluster)
    return {n: (recorded[n], planned[n]) for n in sorted(recorded) if n in planned and recorded[n] != planned[n]}


def record_pod_subnets(cluster: Cluster) -> None:
    """Remember every Kubernetes node's pod subnet (the deploy calls this), so the next model
    keeps them where they are whatever nodes come or go. Nodes gone from the file are dropped:
    their subnets are free again. The masters keep a copy (operations/control_plane.py), which
    ``kthw pki adopt`` brings back to another operator machine."""
    now = pod_subnets(cluster)
    if {k: str(v) for k, v in recorded_pod_subnets(cluster.state_dir).items()} == now:
        return
    write_pod_subnets(cluster.state_dir, pod_subnets_text(now))


def write_pod_subnets(state_dir: Path, text: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / POD_SUBNETS
    tmp = path.with_name(f".{POD_SUBNETS}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- schema errors

_FIXES = {
    "ip_v4_address": ("is not an IPv4 address", "write it like 192.168.56.11"),
    "ip_v4_network": (
        "is not an IPv4 network in CIDR form with its host bits zero",
        "write the network address and prefix, like 10.244.0.0/16",
    ),
    "missing": ("is required but missing", "add it (cluster.yaml in the repository shows every key)"),
    "int_parsing": ("is not a whole number", "write a plain integer"),
    "int_type": ("is not a whole number", "write a plain integer"),
    "int_from_float": ("is not a whole number", "write a plain integer"),
    "greater_than_equal": (None, "raise it"),
    "less_than_equal": (None, "lower it"),
    "dict_type": ("must be a mapping", "write `key: value` pairs under it"),
    "model_type": ("must be a mapping", "write `key: value` pairs under it"),
    "list_type": ("must be a list", "write one `- item` per entry"),
    "too_short": ("is empty", "give at least one entry, or remove the key"),
    "string_type": ("must be a string", 'quote it, like "3.10" (YAML reads 3.10 as the number 3.1)'),
    "bool_type": ("must be true or false", "write true or false"),
}


def _lookup(raw: Any, loc: tuple) -> Any:
    cur = raw
    for part in loc:
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return cur


def _key_name(raw: Any, loc: tuple) -> str:
    """('nodes', 3, 'ip') -> 'nodes[3] (worker-1).ip' so users find the entry fast."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            item = _lookup(raw, loc[: i + 1])
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                out += f" ({item['name']})"
        else:
            out += ("." if out else "") + str(part)
    return out


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = ClusterFile
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            inner = getattr(cand, "__args__", (cand,))
            found = [c for c in (cand, *inner) if isinstance(c, type) and issubclass(c, BaseModel)]
            if found:
                model = found[0]
                break
        else:
            return []
    return list(model.model_fields)


def _schema_problems(exc: ValidationError, raw: Any) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        typ = err["type"]
        key = _key_name(raw, loc)
        value = _lookup(raw, loc)
        if typ == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            problems.append(Problem(key, _MISSING, "is not a known key",
                                    f"{hint}remove or rename it (allowed here: {', '.join(allowed)})"))
        elif typ == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            problems.append(Problem(key, value, "is not one of the supported values",
                                    f"use one of {expected}"))
        elif typ == "string_pattern_mismatch":
            problems.append(Problem(key, value, *_pattern_fix(loc, is_key="[key]" in err["loc"])))
        elif typ in _FIXES:
            what, fix = _FIXES[typ]
            problems.append(Problem(key, value, what or err["msg"].lower(), fix))
        else:
            problems.append(Problem(key, value, err["msg"], "correct the value"))
    return problems


def _pattern_fix(loc: tuple, is_key: bool = False) -> tuple[str, str]:
    if loc[0] == "versions":
        if loc[-1] == "pause":
            return "is not a version like 3.10", 'write it as a quoted string, like "3.10"'
        return "is not a release version like v1.36.3", "write v, then major.minor.patch, like v1.36.3"
    if loc[-1] == "name":
        return ("is not a valid name (lower-case letters, digits and '-', starting and ending "
                "with a letter or digit, at most 63 characters)", "rename it, like worker-3")
    if loc[-1] == "mirror_url":
        return "is not an http(s):// or file:// URL", "write a full URL, like https://mirror.example/kthw"
    if loc[:2] in (("extra_args", "kubelet"), ("extra_args", "kube_proxy")):
        return ("is not a configuration key", "write the field as the component's YAML configuration "
                "names it, like maxPods")
    if loc[0] == "extra_args":
        if not is_key:
            return ("is not a single word", "give the flag's value without spaces, quotes, backslashes, "
                    "% or $ (systemd would expand those two)")
        return ("is not a flag name", "write the flag without its leading dashes, in lower case, like "
                "audit-log-maxage")
    if loc[:2] == ("artifacts", "registry_mirrors"):
        if not is_key:
            return "is not an http(s):// URL", "write the mirror's URL, like http://mirror.lan:5000"
        return ("is not a registry host name", "name the registry as image references do, "
                "like registry.k8s.io or myregistry.lan:5000")
    if loc[-1] == "domain":
        return ("is not a DNS name (labels of lower-case letters, digits and '-', joined by single dots)",
                "write it like cluster.local")
    if loc[-2:] == ("ssh", "host"):
        return ("is not a host name or IP address (it would reach ssh's command line; a leading '-' is an "
                "ssh option)", "write the machine's address, like 10.0.0.11 or node1.example.com")
    if loc[-2:] == ("ssh", "user"):
        return ("is not a user name (lower-case letters, digits, '_' and '-', starting with a letter or '_'; "
                "it reaches ssh's command line and a remote shell)", "write the login name, like ubuntu")
    return "has characters that are not allowed", "use lower-case letters, digits, '-' and '.'"


# --------------------------------------------------------------------------- meaning checks


_SOURCE_OF = {"mirror_url": "mirror", "directory": "directory", "checksums": "mirror or directory"}


def _semantic_checks(spec: ClusterFile, recorded: Mapping[str, IPv4Network] | None = None
                     ) -> tuple[list[Problem], list[str]]:
    p: list[Problem] = []
    warnings: list[str] = []
    net = spec.network

    # Roles: the design is one HAProxy in front of N masters, with M workers.
    roles = Counter(n.role for n in spec.nodes)
    if roles["master"] == 0:
        p.append(Problem("nodes", _MISSING, "has no node with role: master",
                         "add at least one master (etcd and the control plane run there)"))
    if roles["worker"] == 0:
        p.append(Problem("nodes", _MISSING, "has no node with role: worker",
                         "add at least one worker (pods run there)"))
    if roles["loadbalancer"] != 1:
        p.append(Problem("nodes", _MISSING,
                         f"has {roles['loadbalancer']} nodes with role: loadbalancer, "
                         "the design needs exactly one",
                         "keep exactly one loadbalancer node (HAProxy in front of every apiserver)"))
    if roles["master"] and roles["master"] % 2 == 0:
        warnings.append(
            f"{roles['master']} masters make an etcd cluster of {roles['master']} members: "
            f"quorum is {roles['master'] // 2 + 1}, so it tolerates no more member losses than "
            f"{roles['master'] - 1} members would. Use an odd number (3) to survive losing one."
            if roles["master"] > 2 else
            f"{roles['master']} masters make a 2-member etcd cluster (the reference design): quorum is 2, "
            "so losing either master stops all writes. Use 3 masters to survive losing one."
        )

    # Names and addresses must be unique.
    for field in ("name", "ip"):
        counts = Counter(str(getattr(n, field)) for n in spec.nodes)
        for value, count in counts.items():
            if count > 1:
                p.append(Problem(f"nodes[].{field}", value, f"is used by {count} nodes",
                                 f"give every node its own {field}"))

    # The three networks must not overlap: routing (and kube-proxy's rules) would be ambiguous.
    nets = {"network.nodes": net.nodes, "network.pods": net.pods, "network.services": net.services}
    keys = list(nets)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if nets[a].overlaps(nets[b]):
                p.append(Problem(b, str(nets[b]), f"overlaps {a} ({nets[a]})",
                                 "choose ranges that do not share any address"))

    for i, n in enumerate(spec.nodes):
        key = f"nodes[{i}] ({n.name}).ip"
        if n.ip not in net.nodes:
            p.append(Problem(key, str(n.ip), f"is outside network.nodes ({net.nodes})",
                             f"pick an address inside {net.nodes} or change network.nodes"))
        elif n.ip in (net.nodes.network_address, net.nodes.broadcast_address):
            p.append(Problem(key, str(n.ip), "is the network or broadcast address of network.nodes",
                             "pick a host address"))
        elif n.ip == net.nodes.network_address + 1:
            p.append(Problem(key, str(n.ip),
                             "is the first address of network.nodes, which the machine running "
                             "Vagrant (or the lab bridge) takes", "pick another address, like .11"))
        if n.pod_cidr is not None:
            pkey = f"nodes[{i}] ({n.name}).pod_cidr"
            if n.role not in ("master", "worker"):
                p.append(Problem(pkey, str(n.pod_cidr), "is only meaningful on masters and workers "
                                 "(Kubernetes nodes)", "remove it from this node"))
            elif not n.pod_cidr.subnet_of(net.pods):
                p.append(Problem(pkey, str(n.pod_cidr), f"is not inside network.pods ({net.pods})",
                                 f"pick a /{net.pod_subnet_prefix} inside {net.pods}"))
            elif n.pod_cidr.prefixlen != net.pod_subnet_prefix:
                p.append(Problem(pkey, str(n.pod_cidr),
                                 f"is not a /{net.pod_subnet_prefix} (network.pod_subnet_prefix)",
                                 f"use a /{net.pod_subnet_prefix}"))
        if n.ssh is not None and n.ssh.key is not None and n.ssh.key.strip() == "":
            p.append(Problem(f"nodes[{i}] ({n.name}).ssh.key", n.ssh.key, "is empty",
                             "give a path to a private key, or remove the key"))

    # Per-node pod subnets (masters and workers).
    if net.pod_subnet_prefix <= net.pods.prefixlen:
        p.append(Problem("network.pod_subnet_prefix", net.pod_subnet_prefix,
                         f"must be longer than the prefix of network.pods (/{net.pods.prefixlen})",
                         f"use a value above {net.pods.prefixlen}, like 24"))
    else:
        slots = 2 ** (net.pod_subnet_prefix - net.pods.prefixlen)
        kube_nodes = roles["worker"] + roles["master"]
        if kube_nodes > slots:
            p.append(Problem("network.pod_subnet_prefix", net.pod_subnet_prefix,
                             f"gives only {slots} per-node subnets in {net.pods} "
                             f"for {kube_nodes} Kubernetes nodes ({roles['master']} masters, "
                             f"{roles['worker']} workers)",
                             "widen network.pods or lengthen pod_subnet_prefix"))
        else:
            taken = Counter()
            auto = _pod_cidrs(spec, recorded)
            for n, default in zip(spec.nodes, auto, strict=True):
                if n.role in ("master", "worker"):
                    taken[str(n.pod_cidr or default)] += 1
            for cidr, count in taken.items():
                if count > 1:
                    p.append(Problem("nodes[].pod_cidr", cidr, f"is given to {count} nodes",
                                     "give each node its own pod_cidr, or leave them all to the default"))

    # Service network: the API service takes .1; CoreDNS needs its own address inside it.
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

    # Where the binaries come from.
    a = spec.artifacts
    if a.source == "mirror" and not a.mirror_url:
        p.append(Problem("artifacts.mirror_url", _MISSING, "is required with artifacts.source: mirror",
                         "set it to the mirror's base URL"))
    if a.source == "directory" and not a.directory:
        p.append(Problem("artifacts.directory", _MISSING, "is required with artifacts.source: directory",
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

    if spec.pki.renew_before_days >= spec.pki.cert_validity_days:
        p.append(Problem("pki.renew_before_days", spec.pki.renew_before_days,
                         f"is not shorter than pki.cert_validity_days ({spec.pki.cert_validity_days}), "
                         "so every run would re-issue every certificate",
                         "make it a fraction of the validity, like 30"))
    if spec.pki.cert_validity_days > spec.pki.ca_validity_days:
        p.append(Problem("pki.cert_validity_days", spec.pki.cert_validity_days,
                         f"outlives the CA (pki.ca_validity_days = {spec.pki.ca_validity_days})",
                         "keep leaf certificates shorter-lived than the CA"))
    return p, warnings
