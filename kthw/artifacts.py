"""The artifact catalogue and the operator-side download cache.

Every binary the cluster runs is fetched ONCE per operator machine into a local cache,
verified by sha256, unpacked there, and uploaded to the hosts that need it (only when a
host's copy differs). Where the files come from is ``artifacts.source`` in cluster.yaml:

- ``upstream``: the projects' release URLs; sha256 from ``kthw/checksums/upstream-amd64.sha256``,
  kept in the repository for the pinned versions;
- ``mirror``: ``artifacts.mirror_url`` + the relative paths below, with the mirror's own
  checksum list (``artifacts.checksums``, default ``SHA256SUMS``);
- ``directory``: the same layout in a local folder (offline / air-gapped clusters; the lab).

Relative layout of a mirror or directory (``{v}`` is the pinned version)::

    kubernetes/{v}/bin/linux/amd64/kube-apiserver      (and the other Kubernetes binaries)
    etcd/{v}/etcd-{v}-linux-amd64.tar.gz
    containerd/{v}/containerd-{v without v}-linux-amd64.tar.gz
    runc/{v}/runc.amd64
    cni-plugins/{v}/cni-plugins-linux-amd64-{v}.tgz
    crictl/{v}/crictl-{v}-linux-amd64.tar.gz
    SHA256SUMS                                          sha256sum format, relative paths
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kthw.model import REPO_ROOT, Cluster

UPSTREAM_CHECKSUMS = REPO_ROOT / "kthw" / "checksums" / "upstream-amd64.sha256"


class ArtifactError(Exception):
    """An artifact cannot be had or does not verify; the message says what to do."""


@dataclass(frozen=True)
class Artifact:
    """One release file and what is installed from it."""

    name: str
    component: str  # the key in cluster.yaml `versions`
    relpath: str  # in a mirror/directory, with {v} (version) and {n} (version without 'v')
    upstream: str  # upstream URL, same placeholders
    installs: tuple[tuple[str, str], ...]  # (member in the archive, or "" for the file itself; installed path)
    roles: frozenset[str]
    checksum_url: str = ""  # where upstream publishes this file's sha256 (same placeholders)

    def path(self, version: str) -> str:
        return self.relpath.format(v=version, n=version.lstrip("v"))

    def url(self, version: str) -> str:
        return self.upstream.format(v=version, n=version.lstrip("v"))

    def sums_url(self, version: str) -> str:
        return (self.checksum_url or self.upstream + ".sha256").format(v=version, n=version.lstrip("v"))


_K8S = "https://dl.k8s.io/release/{v}/bin/linux/amd64/"
_GH = "https://github.com/"
MASTERS, WORKERS = frozenset({"master"}), frozenset({"worker"})

CATALOGUE: tuple[Artifact, ...] = (
    *(
        Artifact(b, "kubernetes", f"kubernetes/{{v}}/bin/linux/amd64/{b}", _K8S + b,
                 (("", f"/usr/local/bin/{b}"),), MASTERS)
        for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    ),
    *(
        Artifact(b, "kubernetes", f"kubernetes/{{v}}/bin/linux/amd64/{b}", _K8S + b,
                 (("", f"/usr/local/bin/{b}"),), WORKERS)
        for b in ("kubelet", "kube-proxy")
    ),
    Artifact(
        "etcd", "etcd", "etcd/{v}/etcd-{v}-linux-amd64.tar.gz",
        _GH + "etcd-io/etcd/releases/download/{v}/etcd-{v}-linux-amd64.tar.gz",
        tuple((f"etcd-{{v}}-linux-amd64/{b}", f"/usr/local/bin/{b}") for b in ("etcd", "etcdctl", "etcdutl")),
        MASTERS, _GH + "etcd-io/etcd/releases/download/{v}/SHA256SUMS",
    ),
    Artifact(
        "containerd", "containerd", "containerd/{v}/containerd-{n}-linux-amd64.tar.gz",
        _GH + "containerd/containerd/releases/download/{v}/containerd-{n}-linux-amd64.tar.gz",
        tuple((f"bin/{b}", f"/usr/local/bin/{b}") for b in ("containerd", "containerd-shim-runc-v2", "ctr")),
        WORKERS, _GH + "containerd/containerd/releases/download/{v}/containerd-{n}-linux-amd64.tar.gz.sha256sum",
    ),
    Artifact("runc", "runc", "runc/{v}/runc.amd64",
             _GH + "opencontainers/runc/releases/download/{v}/runc.amd64",
             (("", "/usr/local/sbin/runc"),), WORKERS,
             _GH + "opencontainers/runc/releases/download/{v}/runc.sha256sum"),
    Artifact(
        "cni-plugins", "cni_plugins", "cni-plugins/{v}/cni-plugins-linux-amd64-{v}.tgz",
        _GH + "containernetworking/plugins/releases/download/{v}/cni-plugins-linux-amd64-{v}.tgz",
        tuple((f"./{b}", f"/opt/cni/bin/{b}") for b in ("bridge", "host-local", "loopback", "portmap")),
        WORKERS,
    ),
    Artifact(
        "crictl", "crictl", "crictl/{v}/crictl-{v}-linux-amd64.tar.gz",
        _GH + "kubernetes-sigs/cri-tools/releases/download/{v}/crictl-{v}-linux-amd64.tar.gz",
        (("crictl", "/usr/local/bin/crictl"),),
        WORKERS,
    ),
)


@dataclass(frozen=True)
class InstalledFile:
    """A file a host receives: where it goes, the local cached copy and its sha256."""

    dest: str
    local: Path
    sha256: str
    artifact: str


# --------------------------------------------------------------------------- checksums


def parse_sha256sums(text: str) -> dict[str, str]:
    """`sha256sum` output -> {relative path: hex digest}. Comments and blanks are skipped."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*").removeprefix("./")
        if len(digest) == 64 and name:
            out[name] = digest.lower()
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Cache:
    """The operator-side cache (``artifacts.cache_dir``), shared by every cluster."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.cfg = cluster.artifacts
        self.root = Path(os.path.expanduser(self.cfg.cache_dir))
        self._verified_path = self.root / "verified.json"
        try:
            self._verified = json.loads(self._verified_path.read_text())
        except (OSError, ValueError):
            self._verified = {}

    # -- where things come from
    def _expected(self) -> dict[str, str]:
        if self.cfg.source == "upstream":
            try:
                return parse_sha256sums(UPSTREAM_CHECKSUMS.read_text())
            except OSError:
                return {}
        name = self.cfg.checksums or "SHA256SUMS"
        if self.cfg.source == "directory":
            path = Path(os.path.expanduser(self.cfg.directory)) / name
            try:
                return parse_sha256sums(path.read_text())
            except OSError as exc:
                raise ArtifactError(
                    f"artifacts.checksums: cannot read {path} ({exc.strerror}). Fix: put a sha256sum "
                    "list of the release files there, or set artifacts.checksums to its name."
                ) from None
        cached = self.root / "mirrors" / hashlib.sha256(self.cfg.mirror_url.encode()).hexdigest()[:16] / name
        if not cached.exists():
            self._download(f"{self.cfg.mirror_url.rstrip('/')}/{name}", cached)
        return parse_sha256sums(cached.read_text())

    def _download(self, url: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
            os.replace(tmp, dest)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise ArtifactError(f"cannot download {url}: {exc}. Fix: check the network, or use "
                                "artifacts.source: mirror/directory for offline clusters.") from None

    def _is_verified(self, path: Path, digest: str) -> bool:
        """sha256 of a cached file, remembered by (size, mtime) so reruns do not rehash 100 MB."""
        try:
            st = path.stat()
        except OSError:
            return False
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        if self._verified.get(key) == digest:
            return True
        if sha256_file(path) != digest:
            return False
        self._verified[key] = digest
        return True

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._verified_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._verified, indent=0, sort_keys=True))
        os.replace(tmp, self._verified_path)

    # -- one artifact
    def fetch(self, art: Artifact, expected: dict[str, str]) -> Path:
        """The verified release file on local disk (downloaded at most once)."""
        version = getattr(self.cluster.versions, art.component)
        rel = art.path(version)
        digest = expected.get(rel)
        if digest is None:
            where = (f"{UPSTREAM_CHECKSUMS.relative_to(REPO_ROOT)}" if self.cfg.source == "upstream"
                     else f"the checksum list of artifacts.{self.cfg.source}")
            raise ArtifactError(
                f"no sha256 is known for {rel} in {where}. Fix: add its line (`sha256sum` format) "
                f"after checking it against the project's published checksum, or pin versions.{art.component} "
                "to a version listed there."
            )
        if self.cfg.source == "directory":
            local = Path(os.path.expanduser(self.cfg.directory)) / rel
            if not local.exists():
                raise ArtifactError(f"{local} is missing from artifacts.directory. Fix: build or copy it there.")
        else:
            local = self.root / "files" / rel
            if not self._is_verified(local, digest):
                url = (f"{self.cfg.mirror_url.rstrip('/')}/{rel}" if self.cfg.source == "mirror"
                       else art.url(version))
                self._download(url, local)
        if not self._is_verified(local, digest):
            if self.cfg.source != "directory":
                local.unlink(missing_ok=True)
            raise ArtifactError(f"{rel}: sha256 does not match the pinned {digest}; the file was "
                                "discarded. Fix: check the source; never edit the pin to fit.")
        return local

    def unpack(self, art: Artifact, archive: Path, digest_hint: str) -> dict[str, Path]:
        """Archive members we install, extracted once per archive digest."""
        version = getattr(self.cluster.versions, art.component)
        members = {m.format(v=version, n=version.lstrip("v")): dest for m, dest in art.installs}
        if list(members) == [""]:
            return {"": archive}
        out_dir = self.root / "unpacked" / digest_hint
        out = {m: out_dir / m.lstrip("./") for m in members}
        if all(p.exists() for p in out.values()):
            return out
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".unpack-"))
        try:
            with tarfile.open(archive) as tar:
                for member in members:
                    info = tar.getmember(member) if member in tar.getnames() else tar.getmember(
                        member.removeprefix("./"))
                    src = tar.extractfile(info)
                    if src is None:
                        raise ArtifactError(f"{archive}: {member} is not a regular file")
                    target = tmp / member.lstrip("./")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as fh:
                        shutil.copyfileobj(src, fh)
                    target.chmod(0o755)
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
        except KeyError as exc:
            raise ArtifactError(f"{archive} has no member {exc}; is the layout right?") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out


def pin_upstream(cluster: Cluster, fetch=None) -> dict[str, str]:
    """sha256 of every pinned upstream release file, from the checksums each project publishes
    next to its releases: {relative path: hex}. Review them, then commit them to
    UPSTREAM_CHECKSUMS (``python -m kthw pin-checksums`` does both steps but the review)."""
    fetch = fetch or _fetch_text
    out = {}
    for art in CATALOGUE:
        version = getattr(cluster.versions, art.component)
        if art.path(version) in out:
            continue
        text = fetch(art.sums_url(version))
        name = art.url(version).rsplit("/", 1)[-1]
        digest = _digest_for(text, name)
        if digest is None:
            raise ArtifactError(f"{art.sums_url(version)} lists no sha256 for {name}")
        out[art.path(version)] = digest
    return out


def _digest_for(text: str, name: str) -> str | None:
    lines = [line.split() for line in text.splitlines() if line.strip()]
    for words in lines:  # "<hex>  <file>" lists
        if len(words) >= 2 and words[-1].lstrip("*").rsplit("/", 1)[-1] == name and len(words[0]) == 64:
            return words[0].lower()
    if len(lines) == 1 and len(lines[0]) == 1 and len(lines[0][0]) == 64:  # a bare "<hex>"
        return lines[0][0].lower()
    return None


def _fetch_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.read().decode()
    except OSError as exc:
        raise ArtifactError(f"cannot fetch {url}: {exc}") from None


def write_pins(pins: dict[str, str], path: Path = UPSTREAM_CHECKSUMS) -> None:
    """Merge pins into the table, keeping its comments and other versions' lines."""
    lines = path.read_text().splitlines() if path.exists() else []
    known = parse_sha256sums("\n".join(lines))
    known.update(pins)
    header = [line for line in lines if line.startswith("#") or not line.strip()]
    body = [f"{digest}  {rel}" for rel, digest in sorted(known.items())]
    path.write_text("\n".join(header + body) + "\n")


def installed_files(cluster: Cluster, role: str, cache: Cache | None = None) -> list[InstalledFile]:
    """Every binary a host of ``role`` receives, fetched and verified locally."""
    cache = cache or Cache(cluster)
    expected = cache._expected()
    out = []
    for art in CATALOGUE:
        if role not in art.roles:
            continue
        archive = cache.fetch(art, expected)
        version = getattr(cluster.versions, art.component)
        digest = expected[art.path(version)]
        members = cache.unpack(art, archive, digest)
        for member, dest in art.installs:
            local = members[member.format(v=version, n=version.lstrip("v"))]
            file_digest = digest if member == "" else _digest_cached(cache, local)
            out.append(InstalledFile(dest, local, file_digest, art.name))
    cache.save()
    return out


def _digest_cached(cache: Cache, path: Path) -> str:
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|self"
    digest = cache._verified.get(key)
    if digest is None:
        digest = sha256_file(path)
        cache._verified[key] = digest
    return digest
