"""The artifact catalogue and the operator-side download cache.

Every binary the cluster runs is fetched ONCE per operator machine into a local cache,
verified by sha256, unpacked there, and uploaded to the hosts that need it (only when a
host's copy differs). Where the files come from is ``artifacts.source`` in cluster.yaml:

- ``upstream``: the projects' release URLs; sha256 from ``kthw/checksums/upstream-amd64.sha256``,
  kept in the repository for the pinned versions. A file that table does not pin is, with
  ``artifacts.verify: first-use`` (the default), checked against the sha256 its project publishes
  beside the release (https only) and that value is recorded in ``upstream-amd64.lock``, which
  every later run must match (trust on first use, like go.sum); ``verify: pinned`` refuses it;
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
import ssl
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kthw.components import roles_installing
from kthw.model import REPO_ROOT, Cluster
from kthw.paths import BIN_DIR, CNI_BIN, RUNC

UPSTREAM_CHECKSUMS = REPO_ROOT / "kthw" / "checksums" / "upstream-amd64.sha256"
# What artifacts.verify: first-use learnt from upstream's published checksums (sha256sum format).
UPSTREAM_LOCK = REPO_ROOT / "kthw" / "checksums" / "upstream-amd64.lock"
# The release hosts, templated into the catalogue's URLs ({k8s}, {github}); tests point them at a
# loopback server.
UPSTREAM_BASES = {"k8s": "https://dl.k8s.io", "github": "https://github.com"}
# TLS for every download: None is the system's trust store; tests pass a context trusting only
# their throwaway CA. Verification is never switched off.
SSL_CONTEXT: ssl.SSLContext | None = None
TIMEOUT = 60.0  # seconds per connect or read, not for a whole download

_LOCK_HEADER = """\
# Trust on first use (artifacts.verify: first-use, the default for artifacts.source: upstream).
# The sha256 of each upstream release file that upstream-amd64.sha256 does not pin, as its project
# published it (over https) beside the release when this checkout first fetched the file. Every
# later download must match it, like go.sum. Written by kthw, sorted; commit it to share the values,
# or delete a line to learn it again. A line in upstream-amd64.sha256 wins over a line here.
"""


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
    checksum_url: str = ""  # where upstream publishes this file's sha256 (same placeholders)

    @property
    def roles(self) -> frozenset[str]:
        """The roles that receive it: those of the components that install it (kthw/components.py)."""
        return roles_installing(self.name)

    def path(self, version: str) -> str:
        return self.relpath.format(v=version, n=version.lstrip("v"))

    def url(self, version: str) -> str:
        return self.upstream.format(v=version, n=version.lstrip("v"), **UPSTREAM_BASES)

    def sums_url(self, version: str) -> str:
        return (self.checksum_url or self.upstream + ".sha256").format(
            v=version, n=version.lstrip("v"), **UPSTREAM_BASES)


_K8S = "{k8s}/release/{v}/bin/linux/amd64/"
_GH = "{github}/"
# Which roles receive each file is the components' business (kthw/components.py: artifacts).

CATALOGUE: tuple[Artifact, ...] = (
    *(
        Artifact(b, "kubernetes", f"kubernetes/{{v}}/bin/linux/amd64/{b}", _K8S + b,
                 (("", f"{BIN_DIR}/{b}"),))
        for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    ),
    *(
        Artifact(b, "kubernetes", f"kubernetes/{{v}}/bin/linux/amd64/{b}", _K8S + b,
                 (("", f"{BIN_DIR}/{b}"),))
        for b in ("kubelet", "kube-proxy")
    ),
    Artifact(
        "etcd", "etcd", "etcd/{v}/etcd-{v}-linux-amd64.tar.gz",
        _GH + "etcd-io/etcd/releases/download/{v}/etcd-{v}-linux-amd64.tar.gz",
        tuple((f"etcd-{{v}}-linux-amd64/{b}", f"{BIN_DIR}/{b}") for b in ("etcd", "etcdctl", "etcdutl")),
        _GH + "etcd-io/etcd/releases/download/{v}/SHA256SUMS",
    ),
    Artifact(
        "containerd", "containerd", "containerd/{v}/containerd-{n}-linux-amd64.tar.gz",
        _GH + "containerd/containerd/releases/download/{v}/containerd-{n}-linux-amd64.tar.gz",
        tuple((f"bin/{b}", f"{BIN_DIR}/{b}") for b in ("containerd", "containerd-shim-runc-v2", "ctr")),
        _GH + "containerd/containerd/releases/download/{v}/containerd-{n}-linux-amd64.tar.gz.sha256sum",
    ),
    Artifact("runc", "runc", "runc/{v}/runc.amd64",
             _GH + "opencontainers/runc/releases/download/{v}/runc.amd64",
             (("", RUNC),),
             _GH + "opencontainers/runc/releases/download/{v}/runc.sha256sum"),
    Artifact(
        "cni-plugins", "cni_plugins", "cni-plugins/{v}/cni-plugins-linux-amd64-{v}.tgz",
        _GH + "containernetworking/plugins/releases/download/{v}/cni-plugins-linux-amd64-{v}.tgz",
        tuple((f"./{b}", f"{CNI_BIN}/{b}") for b in ("bridge", "host-local", "loopback", "portmap")),
    ),
    Artifact(
        "crictl", "crictl", "crictl/{v}/crictl-{v}-linux-amd64.tar.gz",
        _GH + "kubernetes-sigs/cri-tools/releases/download/{v}/crictl-{v}-linux-amd64.tar.gz",
        (("crictl", f"{BIN_DIR}/crictl"),),
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


def read_sums(path: Path) -> dict[str, str]:
    """A sha256sum file that may not exist yet (the table, the lock): {} when absent."""
    try:
        return parse_sha256sums(path.read_text())
    except OSError:
        return {}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _shown(path: Path) -> str:
    """A path as the user knows it: relative to the checkout when inside it."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _write_atomic(path: Path, text: str) -> None:
    """Write by rename, so a crash or a parallel reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files hold no secret
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# Where the fix lies when a release host cannot be reached or does not serve what we expect.
_NET_FIX = ("Fix: check the network (and any proxy) from this machine, or use artifacts.source: "
            "mirror or directory")
_SUMS_FIX = (f"{_NET_FIX}, or set artifacts.verify: pinned and add the file's line to "
             f"{_shown(UPSTREAM_CHECKSUMS)} yourself")


def _open(url: str, fix: str) -> IO[bytes]:
    """urlopen with our TLS settings; failures become an ArtifactError naming the URL and the fix."""
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT, context=SSL_CONTEXT)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ArtifactError(f"{url} answered HTTP {exc.code} {exc.reason}. {fix}.") from None
    except OSError as exc:  # refused, DNS, timeout, TLS (URLError wraps most of them)
        raise ArtifactError(f"cannot reach {url} ({getattr(exc, 'reason', exc)}). {fix}.") from None


def _require_https(url: str) -> None:
    # First use trusts what the host says, so the host must be authenticated: TLS, never plain http.
    if not url.startswith("https://"):
        raise ArtifactError(f"refusing {url}: trust on first use (artifacts.verify: first-use) needs "
                            "https:// URLs. Fix: use https, or pin the file in "
                            f"{_shown(UPSTREAM_CHECKSUMS)} and set artifacts.verify: pinned")


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

    @property
    def first_use(self) -> bool:
        return self.cfg.source == "upstream" and self.cfg.verify == "first-use"

    # -- where things come from
    def _expected(self) -> dict[str, str]:
        if self.cfg.source == "upstream":
            return read_sums(UPSTREAM_CHECKSUMS)
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
        return self._mirror_sums()

    def _mirror_list(self) -> tuple[str, Path]:
        """The mirror's checksum list: its URL and where it is cached."""
        name = self.cfg.checksums or "SHA256SUMS"
        cached = self.root / "mirrors" / hashlib.sha256(self.cfg.mirror_url.encode()).hexdigest()[:16] / name
        return f"{self.cfg.mirror_url.rstrip('/')}/{name}", cached

    def _mirror_sums(self, refresh: bool = False) -> dict[str, str]:
        """The mirror's list, cached; ``refresh``: fetched again (it may predate a version bump)."""
        url, cached = self._mirror_list()
        if refresh or not cached.exists():
            self._download(url, cached)
        return parse_sha256sums(cached.read_text())

    def _mirror_digest(self, rel: str, expected: dict[str, str]) -> str | None:
        """A mirror's sha256 for ``rel``, held against what this checkout pins (the committed
        table, then the lock): a pin always wins and must agree with the mirror. Over plain
        http the mirror's list comes through the same unauthenticated channel as the file, so
        only a pinned file is accepted."""
        if rel not in expected:  # a cached list older than the versions asked for: ask again once
            expected.update(self._mirror_sums(refresh=True))
        listed = expected.get(rel)
        pinned = read_sums(UPSTREAM_CHECKSUMS).get(rel) or read_sums(UPSTREAM_LOCK).get(rel)
        url, cached = self._mirror_list()
        if pinned and listed and pinned != listed:
            raise ArtifactError(
                f"{rel}: the mirror's {url} lists sha256 {listed}, but this checkout pins {pinned} "
                f"({_shown(UPSTREAM_CHECKSUMS)} or {_shown(UPSTREAM_LOCK)}): the mirror holds another file. "
                "Nothing was downloaded or uploaded. Fix: put the release file upstream published on the mirror.")
        if self.cfg.mirror_url.startswith("http://") and not pinned:
            raise ArtifactError(
                f"refusing {rel} from the plain-http mirror {self.cfg.mirror_url}: its checksum list comes over "
                "the same unauthenticated channel as the file, so anyone on the path could replace both, and "
                f"{_shown(UPSTREAM_CHECKSUMS)} does not pin it. Fix: serve the mirror over https, or add the "
                "file's line (as its project published it) to that table.")
        if not (pinned or listed):
            raise ArtifactError(
                f"no sha256 is known for {rel}: the mirror's list {url} (fetched again just now, cached in "
                f"{cached}) does not name it. Fix: add the file and its line to the mirror's list, or pin "
                "versions to what the mirror holds.")
        return pinned or listed

    def _download(self, url: str, dest: Path) -> str:
        """Fetch ``url`` into ``dest`` (by rename, never half a file); the sha256 of what came."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, _open(url, _NET_FIX) as resp:
                while chunk := resp.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
            os.replace(tmp, dest)
        except OSError as exc:
            raise ArtifactError(f"cannot download {url}: {exc}. {_NET_FIX}.") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return h.hexdigest()

    def _key(self, path: Path) -> str:
        st = path.stat()
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"

    def _is_verified(self, path: Path, digest: str) -> bool:
        """sha256 of a cached file, remembered by (size, mtime) so reruns do not rehash 100 MB."""
        try:
            key = self._key(path)
        except OSError:
            return False
        if self._verified.get(key) == digest:
            return True
        if sha256_file(path) != digest:
            return False
        self._verified[key] = digest
        return True

    def save(self) -> None:
        _write_atomic(self._verified_path, json.dumps(self._verified, indent=0, sort_keys=True))

    # -- one artifact
    def fetch(self, art: Artifact, expected: dict[str, str]) -> tuple[Path, str]:
        """The verified release file on local disk (downloaded at most once) and its sha256."""
        version = getattr(self.cluster.versions, art.component)
        rel = art.path(version)
        digest = self._mirror_digest(rel, expected) if self.cfg.source == "mirror" else expected.get(rel)
        if digest is None and self.first_use:
            return self._fetch_first_use(art, version, rel)
        where = (_shown(UPSTREAM_CHECKSUMS) if self.cfg.source == "upstream"
                 else f"the checksum list of artifacts.{self.cfg.source}")
        if digest is None:
            raise ArtifactError(
                f"no sha256 is known for {rel} in {where}. Fix: add its line (`sha256sum` format) "
                f"after checking it against the project's published checksum, or pin versions.{art.component} "
                "to a version listed there."
            )
        if self.first_use:
            self._note_lock_overruled(rel, digest)
        if self.cfg.source == "directory":
            local = origin = Path(os.path.expanduser(self.cfg.directory)) / rel
            if not local.exists():
                raise ArtifactError(f"{local} is missing from artifacts.directory. Fix: build or copy it there.")
            got = None if self._is_verified(local, digest) else sha256_file(local)
        else:
            local = self.root / "files" / rel
            origin = (f"{self.cfg.mirror_url.rstrip('/')}/{rel}" if self.cfg.source == "mirror"
                      else art.url(version))
            got = None if self._is_verified(local, digest) else self._download(str(origin), local)
        if got is not None and got != digest:
            if self.cfg.source != "directory":
                local.unlink(missing_ok=True)
            done = "nothing" if self.cfg.source == "directory" else "the download was discarded and nothing"
            raise ArtifactError(
                f"{rel}: sha256 {got} of {origin} does not match the pinned {digest} ({where}); {done} "
                "was uploaded. Fix: check the source; never edit the pin to fit.")
        if got is not None:
            self._verified[self._key(local)] = digest
        return local, digest

    def _fetch_first_use(self, art: Artifact, version: str, rel: str) -> tuple[Path, str]:
        """A file the table does not pin: the lock's sha256, or upstream's published one, recorded."""
        url, sums_url = art.url(version), art.sums_url(version)
        lock = _shown(UPSTREAM_LOCK)
        locked = read_sums(UPSTREAM_LOCK).get(rel)
        local = self.root / "files" / rel
        if locked and self._is_verified(local, locked):
            return local, locked  # the usual rerun: no network at all
        _require_https(sums_url)
        _require_https(url)
        published = published_sha256(art, version)
        if locked and published != locked:
            raise ArtifactError(
                f"{rel}: {sums_url} now publishes sha256 {published}, but {lock} recorded {locked} when "
                "this file was first fetched; nothing was downloaded or uploaded. Fix: find out why the "
                "release changed (re-published, or tampered with); only if it is legitimate, delete that "
                f"line from {lock} and run again.")
        want = locked or published
        got = self._download(url, local)
        if got != want:
            local.unlink(missing_ok=True)
            said = f"{lock} (recorded on first use)" if locked else sums_url
            raise ArtifactError(
                f"{rel}: {url} served sha256 {got}, but {said} says {want}; the download was discarded, "
                "nothing was recorded or uploaded. Fix: check the network path to the release host "
                "(proxy, mirror in between) and run again; never edit a checksum to fit.")
        self._verified[self._key(local)] = want
        if not locked:
            _record_lock(rel, want)
            print(f"kthw: first use of {rel}: sha256 {want} from {sums_url}, recorded in {lock}",
                  file=sys.stderr)
        return local, want

    def _note_lock_overruled(self, rel: str, pinned: str) -> None:
        # The reviewed table wins; a lock line that disagrees is ignored, but not silently.
        locked = read_sums(UPSTREAM_LOCK).get(rel)
        if locked and locked != pinned:
            print(f"kthw: {rel}: {_shown(UPSTREAM_LOCK)} has sha256 {locked} but "
                  f"{_shown(UPSTREAM_CHECKSUMS)} pins {pinned}; using the table (delete the lock line)",
                  file=sys.stderr)

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


def _record_lock(rel: str, digest: str) -> None:
    """Add one line to the lock: header, then every entry sorted, so its diffs stay small."""
    entries = read_sums(UPSTREAM_LOCK) | {rel: digest}
    body = "".join(f"{d}  {r}\n" for r, d in sorted(entries.items()))
    try:
        _write_atomic(UPSTREAM_LOCK, _LOCK_HEADER + body)
    except OSError as exc:
        raise ArtifactError(f"cannot record the sha256 of {rel} in {_shown(UPSTREAM_LOCK)} ({exc}). Fix: make it "
                            "writable, or set artifacts.verify: pinned with a filled table.") from None


def published_sha256(art: Artifact, version: str, fetch: Callable[[str], str] | None = None) -> str:
    """The sha256 the project publishes beside the release file (``Artifact.sums_url``)."""
    sums_url = art.sums_url(version)
    name = art.url(version).rsplit("/", 1)[-1]
    digest = _digest_for((fetch or _fetch_text)(sums_url), name)
    if digest is None:
        raise ArtifactError(f"{sums_url} lists no sha256 for {name}. Fix: check that "
                            f"versions.{art.component} = {version} is a published release, or pin the file "
                            f"yourself: its line in {_shown(UPSTREAM_CHECKSUMS)}, artifacts.verify: pinned.")
    return digest


def pin_upstream(cluster: Cluster, fetch: Callable[[str], str] | None = None) -> dict[str, str]:
    """sha256 of every pinned upstream release file, from the checksums each project publishes
    next to its releases: {relative path: hex}. Review them, then commit them to
    UPSTREAM_CHECKSUMS (``python -m kthw pin-checksums`` does both steps but the review)."""
    out = {}
    for art in CATALOGUE:
        version = getattr(cluster.versions, art.component)
        if art.path(version) not in out:
            out[art.path(version)] = published_sha256(art, version, fetch)
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
    """A small published checksum file."""
    with _open(url, _SUMS_FIX) as resp:
        # urllib follows redirects, even https -> http; a checksum must not arrive in the clear.
        if url.startswith("https://") and not resp.geturl().startswith("https://"):
            raise ArtifactError(f"{url} redirected to {resp.geturl()}, which is not https; refused.")
        try:
            return resp.read(1 << 20).decode(errors="replace")
        except OSError as exc:
            raise ArtifactError(f"cannot fetch {url}: {exc}. {_SUMS_FIX}.") from None


def write_pins(pins: dict[str, str], path: Path = UPSTREAM_CHECKSUMS) -> None:
    """Merge pins into the table, keeping its comments and other versions' lines."""
    lines = path.read_text().splitlines() if path.exists() else []
    known = parse_sha256sums("\n".join(lines))
    known.update(pins)
    header = [line for line in lines if line.startswith("#") or not line.strip()]
    body = [f"{digest}  {rel}" for rel, digest in sorted(known.items())]
    _write_atomic(path, "\n".join(header + body) + "\n")


def installed_files(cluster: Cluster, roles: frozenset[str], cache: Cache | None = None) -> list[InstalledFile]:
    """Every binary a host with these roles (kthw.components.roles_of) receives, fetched and
    verified locally."""
    cache = cache or Cache(cluster)
    expected = cache._expected()
    out = []
    for art in CATALOGUE:
        if not roles & art.roles:
            continue
        archive, digest = cache.fetch(art, expected)
        version = getattr(cluster.versions, art.component)
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
