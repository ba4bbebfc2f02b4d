"""The cluster model: load ``cluster.yaml``, validate it, derive what the rest needs.

Everything downstream (Vagrantfile, inventory, PKI, kubeconfigs, operations) reads the
cluster through :class:`Cluster`; nothing re-derives addresses on its own.

Validation runs before any host is touched. Every problem is reported at once, each naming
the key, the bad value and how to fix it::

    >>> load_cluster("cluster.yaml").api_server_url
    'https://192.168.56.30:6443'

This module holds the schema (the sections of :class:`ClusterFile`), the model built from it
(:class:`Cluster`, :class:`Node`) and the loading. Beside it: kthw.model_errors (how a problem is
worded), kthw.checks (what the file must mean beyond its schema) and kthw.podsubnets (each node's
pod subnet and the record that keeps it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from kthw.checks import semantic_checks
from kthw.model_errors import MISSING, ClusterConfigError, Problem, schema_problems
from kthw.podsubnets import (  # noqa: F401  (re-exported: `from kthw.model import pod_subnets` and so on)
    POD_SUBNETS,
    default_pod_cidrs,
    moved_pod_subnets,
    pod_subnets,
    pod_subnets_text,
    record_pod_subnets,
    recorded_pod_subnets,
    write_pod_subnets,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLUSTER_FILE = REPO_ROOT / "cluster.yaml"
# KTHW_CLUSTER picks another model file (the lab's second topology, a user's own cluster).
CLUSTER_ENV = "KTHW_CLUSTER"
API_PORT = 6443
# Every Kubernetes node's own way to the API: HAProxy on its loopback, health-checking every
# apiserver (the port Talos' KubePrism uses; nothing else of ours listens there).
NODE_API_PORT = 7445

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
    # With two load balancers: the virtual IP they share (keepalived, VRRP), the operator's
    # entrance. Inside `nodes`, no node's address.
    api_vip: IPv4Address | None = None


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
    # A load balancer only: an etcd-only member there (no control plane), the third vote that
    # lets two masters lose either one and keep quorum. Masters always run etcd.
    etcd: bool = False


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


class EtcdSection(_Section):
    """etcd's upkeep, done by the deploy (operations/etcd.py: upkeep)."""

    # A member is defragmented (one at a time) once this much of its database file is free
    # pages (deleted and compacted data); below it the pause is not worth the space.
    defrag_free_mib: Annotated[int, Field(ge=1)] = 64


PodSecurityLevel = Literal["privileged", "baseline", "restricted"]


class PodSecuritySection(_Section):
    """Pod Security admission's levels for every namespace that sets none of its own (a
    namespace's ``pod-security.kubernetes.io/<mode>`` labels win): pods breaking ``enforce`` are
    refused, ``audit`` marks them in the audit log, ``warn`` tells the client. The exempt
    namespaces are never checked (kube-system runs the privileged pod network)."""

    enforce: PodSecurityLevel = "baseline"
    audit: PodSecurityLevel = "restricted"
    warn: PodSecurityLevel = "restricted"
    exempt_namespaces: list[Annotated[str, StringConstraints(
        strict=True, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]] = ["kube-system"]

    def __hash__(self) -> int:  # frozen, but holds a list (the model is cached by value)
        return hash(self.model_dump_json())

# How often a master takes an etcd snapshot: whole minutes ("15min") or whole hours ("6h"); kthw.checks
# asks that it divide an hour or a day, so the times are fixed points of the clock (OnCalendar).
Interval = Annotated[str, StringConstraints(strict=True, pattern=r"^[1-9][0-9]*(min|h)$")]


class BackupSection(_Section):
    """Scheduled etcd snapshots: a systemd timer on every master (operations/snapshots.py) takes
    one every ``every`` into /var/lib/etcd-snapshots, in backup.py's format, and keeps the newest
    ``keep``. ``scheduled: false`` turns them off (the deploy removes the timer; the snapshots
    already taken stay until reset)."""

    scheduled: bool = True
    # 6 h: a snapshot reads the whole database and writes it out, cheap but not free; with two
    # masters taking turns (their times are spread over the interval) the newest is at most 3 h old.
    every: Interval = "6h"
    # 8: two days back at 6 h, enough to undo a mistake noticed the next day, at a few MB each.
    keep: Annotated[int, Field(ge=1)] = 8

    @property
    def seconds(self) -> int:
        """``every`` in seconds.

        >>> BackupSection(every="15min").seconds, BackupSection().seconds
        (900, 21600)
        """
        number = int(self.every.rstrip("minh"))
        return number * (60 if self.every.endswith("min") else 3600)


class ClusterFile(_Section):
    """The schema of cluster.yaml, key by key."""

    cluster: ClusterSection
    network: NetworkSection = NetworkSection()
    cni: Cni = "weave"
    nodes: list[NodeSection]
    versions: VersionsSection
    artifacts: ArtifactsSection = ArtifactsSection()
    pki: PkiSection = PkiSection()
    pod_security: PodSecuritySection = PodSecuritySection()
    etcd: EtcdSection = EtcdSection()
    extra_args: ExtraArgsSection = ExtraArgsSection()
    backup: BackupSection = BackupSection()
    # Generated PKI, kubeconfigs and lab state on the operator machine, relative to this file.
    state_dir: str = ".kthw"


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
    etcd: bool = False  # an etcd-only member on a load balancer (masters run etcd regardless)
    api_vip: IPv4Address | None = None  # on the load balancers of a cluster with network.api_vip: they share it

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

    @property
    def runs_etcd(self) -> bool:
        """Every master holds an etcd member; a load balancer given ``etcd: true`` holds one too."""
        return self.role == "master" or self.etcd

    @property
    def holds_certificates(self) -> bool:
        """Whether the deploy places certificates here (Kubernetes nodes and etcd members)."""
        return self.runs_kubelet or self.runs_etcd


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
    pod_security: PodSecuritySection
    etcd: EtcdSection
    extra_args: ExtraArgsSection
    backup: BackupSection
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
    def loadbalancers(self) -> tuple[Node, ...]:
        """One, or two sharing network.api_vip."""
        return tuple(n for n in self.nodes if n.role == "loadbalancer")

    @property
    def loadbalancer(self) -> Node:
        """The first load balancer (the only one, unless two share a virtual IP)."""
        return self.loadbalancers[0]

    @property
    def api_vip(self) -> IPv4Address | None:
        return self.loadbalancer.api_vip

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
        """The operator's entrance: HAProxy on the load balancer, or on whichever of two holds
        the virtual IP."""
        return f"https://{self.api_vip or self.loadbalancer.ip}:{API_PORT}"

    @property
    def service_account_issuer(self) -> str:
        """Names the tokens' issuer: the first load balancer's URL, as before any virtual IP
        (adding a second load balancer must not invalidate every service-account token)."""
        return f"https://{self.loadbalancer.ip}:{API_PORT}"

    @property
    def local_api_server_url(self) -> str:
        """What components on a master talk to: their own apiserver."""
        return f"https://127.0.0.1:{API_PORT}"

    @property
    def node_api_server_url(self) -> str:
        """What every node's kubelet and kube-proxy talk to: the HAProxy on its own loopback,
        which reaches every apiserver (a master's own first), so no single machine is between a
        node and the API."""
        return f"https://127.0.0.1:{NODE_API_PORT}"

    @cached_property
    def etcd_members(self) -> tuple[Node, ...]:
        """Every etcd member: the masters, then a load balancer's etcd-only member if it has one."""
        return (*self.masters, *(n for n in self.nodes if n.runs_etcd and not n.is_master))

    @property
    def etcd_initial_cluster(self) -> str:
        return ",".join(f"{m.name}=https://{m.ip}:2380" for m in self.etcd_members)

    @property
    def etcd_servers(self) -> str:
        return ",".join(f"https://{m.ip}:2379" for m in self.etcd_members)

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
            [Problem("(file)", MISSING, f"is not valid YAML at {where}: {getattr(exc, 'problem', exc)}",
                     "correct the YAML syntax there")],
        ) from None
    return parse_cluster(raw, source=path)


def parse_cluster(raw: Any, source: Path | str = "cluster.yaml") -> Cluster:
    """Validate an already-parsed mapping (tests build these directly)."""
    source = Path(source)
    spec = _validated(raw, source)
    state_dir = _state_root(spec, source) / spec.cluster.name
    recorded = recorded_pod_subnets(state_dir)
    problems, warnings = semantic_checks(spec, recorded)
    if problems:
        raise ClusterConfigError(str(source), problems)
    cluster = _build(spec, default_pod_cidrs(spec, recorded), state_dir, source, tuple(warnings))
    _check_flag_removals(cluster)
    return cluster


def _validated(raw: Any, source: Path) -> ClusterFile:
    """``raw`` read against the schema, or every schema problem raised at once."""
    if not isinstance(raw, dict):
        raise ClusterConfigError(
            str(source),
            [Problem("(file)", MISSING, "must be a mapping of sections (cluster, network, nodes, ...)",
                     "start from the cluster.yaml shipped in the repository")],
        )
    try:
        return ClusterFile.model_validate(raw)
    except ValidationError as exc:
        raise ClusterConfigError(str(source), schema_problems(exc, raw, ClusterFile)) from None


def _state_root(spec: ClusterFile, source: Path) -> Path:
    """$KTHW_STATE_DIR or state_dir, relative to the cluster file (each cluster a folder in it)."""
    state_dir = Path(os.path.expanduser(os.environ.get("KTHW_STATE_DIR") or spec.state_dir))
    if not state_dir.is_absolute():
        state_dir = Path(os.path.normpath(source.resolve().parent / state_dir))
    return state_dir


def _build(spec: ClusterFile, auto: list[IPv4Network | None], state_dir: Path, source: Path,
           warnings: tuple[str, ...]) -> Cluster:
    """The Cluster of a checked file; ``auto`` is each node's default pod subnet (kthw.podsubnets)."""
    nodes = []
    for n, default in zip(spec.nodes, auto, strict=True):
        pod_cidr = n.pod_cidr or default
        vip = spec.network.api_vip if n.role == "loadbalancer" else None
        nodes.append(Node(n.name, n.role, n.ip, n.cpus, n.memory, pod_cidr, n.ssh, n.etcd, vip))
    return Cluster(
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
        pod_security=spec.pod_security,
        etcd=spec.etcd,
        extra_args=spec.extra_args,
        backup=spec.backup,
        state_dir=state_dir,
        source=source,
        warnings=warnings,
    )


def _check_flag_removals(cluster: Cluster) -> None:
    """An extra_args ``null`` removes a flag the deploy sets: refuse one that removes nothing."""
    from kthw.flags import removal_problems  # (the flags are made from a built cluster; kthw.flags imports this)

    if bad := removal_problems(cluster):
        raise ClusterConfigError(str(cluster.source), [
            Problem(key, None, f"removes --{flag}, but the deploy does not set that flag",
                    "drop the key, or give it a value to add the flag") for key, flag in bad])
