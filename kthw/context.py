"""What one host needs, computed on the operator machine before anything runs on it.

The deploy asks each component (``operations/*.py``) what it wants on this host
(:class:`Wants`: directories, files, services, packages, sysctls), reads the host's current
state for all of it with ONE remote command, then runs the components' operations against
that snapshot.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from kthw import packing, paths
from kthw.artifacts import ArtifactError, Cache, InstalledFile, installed_files, sha256_file
from kthw.cluster_secrets import ENCRYPTION_CONFIG, known_configs
from kthw.components import roles_of
from kthw.flags import TLS_CIPHER_SUITES, command_line, merged_config, user_args
from kthw.kubeconfig import write_kubeconfigs
from kthw.model import API_PORT, REPO_ROOT, Cluster, Node, load_cluster, record_pod_subnets
from kthw.ops import Directory, ManagedFile, Snapshot
from kthw.pki import CA_SUBJECTS, IDENTITY_FILES, ensure_pki, known_trust, trust_bundle

FILES = REPO_ROOT / "files"
# Before the host has answered, templates see these neutral values; only file *contents* may
# depend on host facts, never which files exist (the snapshot must know every path up front).
NEUTRAL_FACTS = {"cgroup": "v2", "container": "", "resolved": False, "sys_resource": True}

_jinja = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(FILES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


_jinja.globals["tls_cipher_suites"] = TLS_CIPHER_SUITES
_jinja.globals["paths"] = paths  # host paths in templates come from kthw/paths.py


class DeployRefused(Exception):
    """The host's state forbids what the model asks (the message says why and what to do)."""


@dataclass
class Wants:
    """What a component wants on a host. Groups of files become one operation each."""

    dirs: list[Directory] = field(default_factory=list)
    files: dict[str, list[ManagedFile]] = field(default_factory=dict)
    services: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    manifests: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    # named snapshot questions and their arguments (kthw/remote/host_state.py QUESTIONS)
    queries: dict[str, object] = field(default_factory=dict)

    def all_files(self) -> list[ManagedFile]:
        return [f for group in self.files.values() for f in group]

    def all_packages(self) -> list[str]:
        """Its Debian packages, and zstd where a file of it is sent compressed (kthw.packing)."""
        packed = any(f.zstd_cache for f in self.all_files()) and packing.PACKAGE not in self.packages
        return [*self.packages, *([packing.PACKAGE] if packed else [])]


_prepare_lock = threading.Lock()


@cache
def _prepared(cluster_source: str) -> Cluster:
    """Load the model and bring the local PKI and kubeconfigs up to date, once per run
    (deploy.py runs once per host, concurrently; this must not)."""
    cluster = load_cluster(cluster_source)
    ensure_pki(cluster)
    write_kubeconfigs(cluster)
    record_pod_subnets(cluster)  # kept where they are when nodes come or go
    return cluster


def prepared_cluster(cluster_source: str) -> Cluster:
    with _prepare_lock:
        return _prepared(cluster_source)


@cache
def offline_images(cluster: Cluster) -> list[tuple[Path, str, str]]:
    """The archives in artifacts.images, with the reference each holds (from its IMAGES list:
    `<file> <reference>` per line) and sha256 (from SHA256SUMS beside or above it)."""
    if not cluster.artifacts.images:
        return []
    folder = Path(os.path.expanduser(cluster.artifacts.images))
    if not folder.is_dir():
        raise ArtifactError(f"artifacts.images: {folder} is not a folder of image archives. Fix: build "
                            "or copy the archives there, or remove the key.")
    refs = {}
    if (folder / "IMAGES").exists():
        for line in (folder / "IMAGES").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, ref = line.partition(" ")
                refs[name] = ref.strip()
    out = []
    for path in sorted(folder.glob("*.tar")):
        out.append((path, sha256_file(path), refs.get(path.name, "")))
    return out


_binaries_lock = threading.Lock()
_binaries: dict[tuple[str, str], list[InstalledFile]] = {}


def binaries_for(cluster: Cluster, roles: frozenset[str]) -> list[InstalledFile]:
    """Fetched, verified and unpacked once per run and set of roles, shared by every host."""
    with _binaries_lock:
        key = (str(cluster.source), roles)
        if key not in _binaries:
            _binaries[key] = installed_files(cluster, roles, Cache(cluster))
        return _binaries[key]


@dataclass
class HostContext:
    cluster: Cluster
    node: Node
    facts: dict = field(default_factory=lambda: dict(NEUTRAL_FACTS))
    snapshot: Snapshot | None = None
    data: Any = None  # the host's pyinfra data (--data switches), where there is a host

    def allow(self, switch: str) -> bool:
        """Whether the run was given ``--data <switch>=yes``."""
        return self.data is not None and str(self.data.get(switch, "")).lower() in ("yes", "true", "1")

    @property
    def is_master(self) -> bool:
        return self.node.role == "master"

    @property
    def is_worker(self) -> bool:
        return self.node.role == "worker"

    @property
    def is_loadbalancer(self) -> bool:
        return self.node.role == "loadbalancer"

    @property
    def is_first_master(self) -> bool:
        """The master that applies cluster-level objects: a fixed choice, never _run_once."""
        return self.node.name == self.cluster.masters[0].name

    def render(self, template: str, **extra) -> str:
        return _jinja.get_template(template).render(
            cluster=self.cluster, node=self.node, api_port=API_PORT, facts=self.facts,
            flags=lambda component: command_line(self.cluster, self.node, component), **extra
        )

    def template_file(self, dest: str, template: str | None = None, mode: int = 0o644,
                      secret: bool = False, extra_args: str | None = None, **extra) -> ManagedFile:
        """A file rendered from ``files/<dest>.j2`` (or ``template``); ``extra_args``: the
        component whose extra_args (cluster.yaml) are merged into it (a YAML configuration)."""
        template = template or dest.lstrip("/") + ".j2"
        text = self.render(template, **extra)
        if extra_args:
            text = merged_config(text, user_args(self.cluster, extra_args))
        return ManagedFile.text(dest, text, mode=mode, secret=secret)

    def pki_file(self, name: str, dest: str, secret: bool | None = None, signer: bool = False) -> ManagedFile:
        """A file from the local PKI folder; keys and configs are secret (0600).

        A CA certificate (``ca.crt``, ``etcd-ca.crt``, ``front-proxy-ca.crt``) becomes the CA's
        trust bundle (both CAs during a rotation), unless ``signer``: then the signing CA alone,
        for a component that signs with the CA's key (the controller-manager)."""
        pki = self.cluster.pki_dir
        stem = name.removesuffix(".crt")
        if stem in CA_SUBJECTS and not signer:
            f = ManagedFile.content(dest, trust_bundle(pki, stem))
            return dataclasses.replace(f, identity=True, accepted=frozenset(known_trust(pki, stem)))
        data = (pki / name).read_bytes()
        if name == ENCRYPTION_CONFIG:  # a key rotation's earlier states are this cluster's too
            return ManagedFile.content(dest, data, mode=0o600, secret=True, accepted=frozenset(known_configs(pki)))
        secret = name.endswith(".key") or name.endswith(".yaml") if secret is None else secret
        f = ManagedFile.content(dest, data, mode=0o600 if secret else 0o644, secret=secret)
        return dataclasses.replace(f, identity=True) if name in IDENTITY_FILES and not signer else f

    def kubeconfig_file(self, name: str, dest: str) -> ManagedFile:
        data = (self.cluster.kubeconfig_dir / f"{name}.kubeconfig").read_bytes()
        return ManagedFile.content(dest, data, mode=0o600, secret=True)

    def images(self) -> list[tuple[Path, str, str]]:
        """Offline image archives (artifacts.images): (file, sha256, image reference)."""
        return offline_images(self.cluster)

    def binaries(self, names: set[str] | None = None) -> list[ManagedFile]:
        found = [b for b in binaries_for(self.cluster, roles_of(self.node)) if names is None or b.artifact in names]
        if names is not None and (missing := names - {b.artifact for b in found}):
            # A component asking for what the catalogue does not give this role would
            # otherwise see "nothing to install" and report the host as up to date.
            raise ValueError(f"artifacts {sorted(missing)} are not installed on {self.node.role} nodes: "
                             "add them to the component's artifacts in kthw/components.py")
        return [ManagedFile.binary(b.dest, b.local, b.sha256, zstd_cache=packing.cache_dir(self.cluster))
                for b in found]
