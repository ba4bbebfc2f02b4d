"""Trust on first use (artifacts.verify: first-use) against a loopback HTTPS release host.

The "release hosts" are one HTTPS server on 127.0.0.1 with a certificate from a CA made here and
trusted only through ``kthw.artifacts.SSL_CONTEXT``; it serves small stand-in release files in
the upstream URL layout with checksum files beside them. Nothing leaves the machine.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import ipaddress
import shutil
import socket
import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kthw import artifacts
from kthw.artifacts import CATALOGUE, ArtifactError, Cache, installed_files, parse_sha256sums
from kthw.model import DEFAULT_CLUSTER_FILE, parse_cluster
from tests.conftest import make_fake_artifacts

RAW = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
VERSIONS = RAW["versions"]
KUBELET = next(a for a in CATALOGUE if a.name == "kubelet")
ETCD = next(a for a in CATALOGUE if a.name == "etcd")

# the roles (kthw.components.roles_of) of a master, a worker and the load balancer
MASTER = frozenset({"master", "etcd member"})
WORKER = frozenset({"worker"})
LOADBALANCER = frozenset({"loadbalancer"})


# --------------------------------------------------------------------------- the release host


def _tls(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context): a throwaway CA and a 127.0.0.1 certificate it signed."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("kthw test CA", ca_key, "kthw test CA", ca_key, True)
    leaf = cert("127.0.0.1", key, "kthw test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(leaf.public_bytes(pem) + key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "server.pem")
    return server, ssl.create_default_context(cafile=str(folder / "ca.pem"))


class ReleaseHost:
    """Serves ``files`` ({URL path: bytes}) and counts every request in ``hits``."""

    def __init__(self, server_ctx: ssl.SSLContext | None):
        self.files: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                host.hits[self.path] += 1
                body = host.files.get(self.path)
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args) -> None:  # keep stderr for what kthw prints
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if server_ctx is not None:  # None: plain http
            self.httpd.socket = server_ctx.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "http" if server_ctx is None else "https"
        self.base = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return _tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def host(tls):
    h = ReleaseHost(tls[0])
    yield h
    h.close()


def bases(base: str) -> dict[str, str]:
    """The upstream hosts as folders of one server: https://127.0.0.1:PORT/dl.k8s.io/..."""
    return {"k8s": f"{base}/dl.k8s.io", "github": f"{base}/github.com"}


def path_of(url: str) -> str:
    return urlsplit(url).path


class Upstream:
    """One test's world: the release host's files, the table, the lock, a cluster."""

    def __init__(self, tmp: Path, host: ReleaseHost):
        self.tmp, self.host = tmp, host
        self.table, self.lock = tmp / "upstream-amd64.sha256", tmp / "upstream-amd64.lock"
        self.cache_dir = tmp / "cache"
        release = tmp / "release"
        make_fake_artifacts(release, VERSIONS)
        host.files.clear()
        host.hits.clear()
        self.digest: dict[str, str] = {}  # relative path -> sha256 of the real stand-in
        for art in CATALOGUE:
            v = VERSIONS[art.component]
            data = (release / art.path(v)).read_bytes()
            self.digest[art.path(v)] = hashlib.sha256(data).hexdigest()
            host.files[path_of(art.url(v))] = data
            self.publish(art, self.digest[art.path(v)])

    def publish(self, art, digest: str) -> None:
        """Put ``digest`` in the checksum file beside ``art``, in that project's own format."""
        v = VERSIONS[art.component]
        sums, name = path_of(art.sums_url(v)), art.url(v).rsplit("/", 1)[-1]
        if art.sums_url(v) == art.url(v) + ".sha256":  # dl.k8s.io, CNI, crictl: the bare hash
            self.host.files[sums] = f"{digest}\n".encode()
            return
        # etcd, containerd, runc: "<hex>  <file>" lists, other platforms' lines around ours
        lines = [ln for ln in self.host.files.get(sums, b"").decode().splitlines() if not ln.endswith(name)]
        lines += [f"{digest}  {name}", f"{'0' * 64}  {name.replace('amd64', 'arm64')}"]
        self.host.files[sums] = ("\n".join(sorted(set(lines))) + "\n").encode()

    def cluster(self, **artifacts_cfg):
        raw = copy.deepcopy(RAW)
        raw["artifacts"] = {"source": "upstream", "cache_dir": str(self.cache_dir), **artifacts_cfg}
        raw["state_dir"] = str(self.tmp / "state")
        return parse_cluster(raw, source=self.tmp / "cluster.yaml")

    def sums_hits(self) -> int:
        return sum(n for p, n in self.host.hits.items() if p.endswith(("sha256", "SHA256SUMS", "sha256sum")))


@pytest.fixture
def up(tmp_path, monkeypatch, host, tls):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # loopback only, never through a proxy
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(artifacts, "UPSTREAM_BASES", bases(host.base))  # before any URL is made
    world = Upstream(tmp_path, host)
    monkeypatch.setattr(artifacts, "UPSTREAM_CHECKSUMS", world.table)
    monkeypatch.setattr(artifacts, "UPSTREAM_LOCK", world.lock)
    monkeypatch.setattr(artifacts, "SSL_CONTEXT", tls[1])
    monkeypatch.setattr(artifacts, "TIMEOUT", 2.0)
    return world


# --------------------------------------------------------------------------- the tests


def test_first_use_verifies_records_and_says_so(up, capsys):
    cluster = up.cluster()
    files = installed_files(cluster, WORKER) + installed_files(cluster, MASTER)
    assert {f.dest for f in files} >= {"/usr/local/bin/kubelet", "/usr/local/bin/etcd"}

    rels = sorted(up.digest)
    text = up.lock.read_text()
    assert text.startswith("# Trust on first use")
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert body == [f"{up.digest[r]}  {r}" for r in rels]  # sorted, one line per file
    assert parse_sha256sums(text) == up.digest

    err = capsys.readouterr().err.splitlines()
    assert len(err) == len(rels)
    v = VERSIONS["kubernetes"]
    rel = KUBELET.path(v)
    assert (f"kthw: first use of {rel}: sha256 {up.digest[rel]} from {KUBELET.sums_url(v)}, "
            f"recorded in {up.lock}") in err
    assert KUBELET.sums_url(v).startswith(up.host.base + "/dl.k8s.io/release/")


def test_a_rerun_trusts_the_lock_and_the_cache(up, capsys):
    installed_files(up.cluster(), WORKER)
    lock_before = up.lock.read_text()
    capsys.readouterr()
    up.host.hits.clear()
    installed_files(up.cluster(), WORKER)  # a new Cache, as a new deploy makes
    assert up.host.hits == Counter()  # neither a checksum file nor a binary was fetched again
    assert up.lock.read_text() == lock_before
    assert capsys.readouterr().err == ""


def test_a_tampered_binary_is_refused_and_nothing_recorded(up, capsys):
    v = VERSIONS["kubernetes"]
    rel, url = KUBELET.path(v), KUBELET.url(v)
    up.host.files[path_of(url)] = b"not the release"
    with pytest.raises(ArtifactError) as err:
        installed_files(up.cluster(), WORKER)
    msg = str(err.value)
    for part in (rel, url, up.digest[rel], hashlib.sha256(b"not the release").hexdigest()):
        assert part in msg
    assert not up.lock.exists()
    assert "first use" not in capsys.readouterr().err
    folder = up.cache_dir / "files" / Path(rel).parent
    assert list(folder.iterdir()) == []  # discarded, no partial download either


def test_a_changed_checksum_file_disagreeing_with_the_lock_stops(up):
    installed_files(up.cluster(), WORKER)
    v = VERSIONS["kubernetes"]
    rel, evil = KUBELET.path(v), b"a re-published kubelet"
    evil_digest = hashlib.sha256(evil).hexdigest()
    up.host.files[path_of(KUBELET.url(v))] = evil
    up.publish(KUBELET, evil_digest)
    shutil.rmtree(up.cache_dir)  # so the file has to be downloaded again
    lock_before = up.lock.read_text()
    up.host.hits.clear()
    with pytest.raises(ArtifactError) as err:
        installed_files(up.cluster(), WORKER)
    msg = str(err.value)
    for part in (rel, KUBELET.sums_url(v), up.digest[rel], evil_digest, "now publishes"):
        assert part in msg
    assert up.host.hits[path_of(KUBELET.url(v))] == 0  # stopped before downloading it
    assert up.lock.read_text() == lock_before


def test_a_changed_binary_disagreeing_with_the_lock_stops(up):
    installed_files(up.cluster(), WORKER)
    v = VERSIONS["kubernetes"]
    rel = KUBELET.path(v)
    up.host.files[path_of(KUBELET.url(v))] = b"swapped"  # the checksum file still says the old value
    shutil.rmtree(up.cache_dir)
    with pytest.raises(ArtifactError) as err:
        installed_files(up.cluster(), WORKER)
    msg = str(err.value)
    for part in (rel, KUBELET.url(v), up.digest[rel], hashlib.sha256(b"swapped").hexdigest(), str(up.lock)):
        assert part in msg


def test_a_missing_checksum_file_is_a_clear_error(up):
    v = VERSIONS["kubernetes"]
    del up.host.files[path_of(KUBELET.sums_url(v))]
    with pytest.raises(ArtifactError, match=r"kubelet\.sha256 answered HTTP 404") as err:
        installed_files(up.cluster(), WORKER)
    assert KUBELET.sums_url(v) in str(err.value)
    assert up.host.hits[path_of(KUBELET.url(v))] == 0
    assert not up.lock.exists()


def test_a_checksum_file_that_does_not_list_the_file_is_a_clear_error(up):
    v = VERSIONS["etcd"]
    name = ETCD.url(v).rsplit("/", 1)[-1]
    up.host.files[path_of(ETCD.sums_url(v))] = f"{'1' * 64}  etcd-{v}-linux-arm64.tar.gz\n".encode()
    with pytest.raises(ArtifactError, match=f"{ETCD.sums_url(v)} lists no sha256 for {name}"):
        Cache(up.cluster()).fetch(ETCD, {})


def test_an_unreachable_host_is_a_clear_error_and_quick(up, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(artifacts, "UPSTREAM_BASES", bases(f"https://127.0.0.1:{port}"))
    start = time.monotonic()
    with pytest.raises(ArtifactError) as err:
        installed_files(up.cluster(), WORKER)
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert msg.startswith(f"cannot reach https://127.0.0.1:{port}/dl.k8s.io/")
    assert "check the network" in msg and "artifacts.source: mirror or directory" in msg
    assert "artifacts.verify: pinned" in msg


def test_plain_http_is_refused_for_first_use(up, monkeypatch):
    monkeypatch.setattr(artifacts, "UPSTREAM_BASES", bases(up.host.base.replace("https://", "http://")))
    with pytest.raises(ArtifactError, match=r"refusing http://127\.0\.0\.1:\d+/dl\.k8s\.io/.*needs https://"):
        installed_files(up.cluster(), WORKER)
    assert up.host.hits == Counter()


def test_pinned_refuses_what_the_table_lacks_and_never_writes_a_lock(up):
    with pytest.raises(ArtifactError, match="no sha256 is known for kubernetes/"):
        installed_files(up.cluster(verify="pinned"), WORKER)
    assert up.host.hits == Counter()
    up.table.write_text("# the committed table\n" + "".join(f"{d}  {r}\n" for r, d in up.digest.items()))
    installed_files(up.cluster(verify="pinned"), WORKER)
    assert not up.lock.exists()
    assert up.sums_hits() == 0


def test_the_committed_table_wins_over_the_lock(up, capsys):
    v = VERSIONS["kubernetes"]
    rel = KUBELET.path(v)
    up.table.write_text(f"{up.digest[rel]}  {rel}\n")
    up.lock.write_text(f"{'f' * 64}  {rel}\n")  # a stale or wrong lock line
    files = installed_files(up.cluster(), WORKER)
    assert next(f for f in files if f.artifact == "kubelet").sha256 == up.digest[rel]
    assert up.host.hits[path_of(KUBELET.sums_url(v))] == 0  # the table needs no checksum file
    assert parse_sha256sums(up.lock.read_text())[rel] == "f" * 64  # ignored, not rewritten
    err = capsys.readouterr().err
    assert f"{rel}: {up.lock} has sha256 {'f' * 64} but {up.table} pins {up.digest[rel]}; using the table" in err


# --------------------------------------------------------------------------- artifacts.source: mirror


@pytest.fixture(scope="module")
def plain_host():
    h = ReleaseHost(None)
    yield h
    h.close()


def mirrored(up: Upstream, host: ReleaseHost, listed: dict[str, str] | None = None):
    """A mirror on ``host`` at /mirror holding the release files and a SHA256SUMS (``listed``,
    default the true sha256 of each); a cluster that uses it."""
    release = up.tmp / "release"
    host.files.clear()
    host.hits.clear()
    for rel in up.digest:
        host.files[f"/mirror/{rel}"] = (release / rel).read_bytes()
    sums = up.digest if listed is None else listed
    host.files["/mirror/SHA256SUMS"] = "".join(f"{d}  {r}\n" for r, d in sums.items()).encode()
    return up.cluster(source="mirror", mirror_url=f"{host.base}/mirror")


def test_a_plain_http_mirror_serves_only_what_this_checkout_pins(up, plain_host):
    # finding 6: the list and the file came over the same unauthenticated channel, and nothing said so
    cluster = mirrored(up, plain_host)
    rel = KUBELET.path(VERSIONS["kubernetes"])
    with pytest.raises(ArtifactError, match="refusing kubernetes/.* from the plain-http mirror") as err:
        installed_files(cluster, WORKER)
    assert "serve the mirror over https" in str(err.value)
    assert not [p for p in plain_host.hits if not p.endswith("SHA256SUMS")]  # no release file fetched
    up.table.write_text("".join(f"{d}  {r}\n" for r, d in up.digest.items()))  # every file pinned
    files = installed_files(cluster, WORKER)
    assert next(f for f in files if f.artifact == "kubelet").sha256 == up.digest[rel]


def test_a_mirror_list_that_disagrees_with_the_committed_table_is_refused(up, host):
    rel = KUBELET.path(VERSIONS["kubernetes"])
    cluster = mirrored(up, host, listed={**up.digest, rel: "e" * 64})
    up.table.write_text(f"{up.digest[rel]}  {rel}\n")
    with pytest.raises(ArtifactError, match=f"{rel}: the mirror's .* lists sha256 {'e' * 64}, but this checkout "
                                            f"pins {up.digest[rel]}"):
        installed_files(cluster, WORKER)
    assert host.hits[f"/mirror/{rel}"] == 0


def test_a_cached_mirror_list_is_fetched_again_for_a_file_it_lacks(up, host):
    # finding 7: the list was cached for ever; after a version bump "no sha256 is known" did not
    # name the stale cached file
    rel = KUBELET.path(VERSIONS["kubernetes"])
    cluster = mirrored(up, host, listed={r: d for r, d in up.digest.items() if r != rel})
    Cache(cluster)._expected()  # cached without the kubelet's line, as before a version bump
    host.files["/mirror/SHA256SUMS"] = "".join(f"{d}  {r}\n" for r, d in up.digest.items()).encode()
    files = installed_files(cluster, WORKER)
    assert next(f for f in files if f.artifact == "kubelet").sha256 == up.digest[rel]
    assert host.hits["/mirror/SHA256SUMS"] == 2  # once cached, once more for the missing line
    # a list that still lacks it names the URL and the cached file
    host.files["/mirror/SHA256SUMS"] = b""
    with pytest.raises(ArtifactError, match=r"no sha256 is known for kubernetes/.*: the mirror's list .*SHA256SUMS "
                                            r"\(fetched again just now, cached in .*SHA256SUMS\)"):
        Cache(cluster).fetch(KUBELET, {})
