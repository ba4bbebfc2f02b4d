"""The artifact catalogue and the operator-side cache, on small stand-in release files."""

from __future__ import annotations

import hashlib
import os

import pytest
import yaml

from kthw.artifacts import (
    CATALOGUE,
    ArtifactError,
    Cache,
    _digest_for,
    installed_files,
    parse_sha256sums,
    pin_upstream,
    write_pins,
)
from kthw.model import DEFAULT_CLUSTER_FILE, ClusterConfigError, load_cluster, parse_cluster
from tests.conftest import cluster_file

# the roles (kthw.components.roles_of) of a master, a worker and the load balancer
MASTER = frozenset({"master", "etcd member"})
WORKER = frozenset({"worker"})
LOADBALANCER = frozenset({"loadbalancer"})


@pytest.fixture
def cluster(tmp_path):
    return load_cluster(cluster_file(tmp_path))


def test_every_role_gets_its_binaries(cluster):
    masters = {f.dest for f in installed_files(cluster, MASTER)}
    workers = {f.dest for f in installed_files(cluster, WORKER)}
    assert {"/usr/local/bin/kube-apiserver", "/usr/local/bin/etcd", "/usr/local/bin/etcdctl",
            "/usr/local/bin/kubectl"} <= masters
    assert {"/usr/local/bin/kubelet", "/usr/local/bin/containerd", "/usr/local/sbin/runc",
            "/opt/cni/bin/bridge", "/usr/local/bin/crictl"} <= workers
    assert workers < masters  # masters are Kubernetes nodes too: the node runtime goes everywhere
    assert "/usr/local/bin/kube-apiserver" not in workers
    assert installed_files(cluster, LOADBALANCER) == []


def test_unpacked_members_carry_their_own_sha256(cluster):
    for f in installed_files(cluster, WORKER):
        assert hashlib.sha256(f.local.read_bytes()).hexdigest() == f.sha256


def test_a_file_that_does_not_match_its_pin_is_refused(cluster):
    art_dir = cluster.artifacts.directory
    target = os.path.join(art_dir, CATALOGUE[0].path(cluster.versions.kubernetes))
    with open(target, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ArtifactError, match="does not match the pinned"):
        installed_files(cluster, MASTER, Cache(cluster))


def test_a_version_without_a_pin_is_refused_with_the_fix(tmp_path):
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    path = cluster_file(tmp_path, raw)
    text = path.read_text().replace("kubernetes: v1.36.3", "kubernetes: v1.36.4")
    path.write_text(text)
    with pytest.raises(ArtifactError, match="no sha256 is known for kubernetes/v1.36.4"):
        installed_files(load_cluster(path), MASTER)


def test_upstream_pinned_without_pins_names_the_table(tmp_path):
    # verify: pinned never asks the network; first use is tested offline in test_downloads.py.
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    raw["artifacts"] = {"source": "upstream", "verify": "pinned", "cache_dir": str(tmp_path / "cache")}
    cluster = parse_cluster(raw, source=tmp_path / "cluster.yaml")
    with pytest.raises(ArtifactError, match="no sha256 is known for .* in kthw/checksums/upstream-amd64.sha256"):
        installed_files(cluster, MASTER, Cache(cluster))


def test_verify_accepts_only_its_two_values(raw_cluster):
    raw_cluster["artifacts"] = {"verify": "tofu"}
    with pytest.raises(ClusterConfigError) as err:
        parse_cluster(raw_cluster)
    assert "artifacts.verify = 'tofu': is not one of the supported values. Fix: use one of " \
           "'first-use' or 'pinned'" in str(err.value)
    raw_cluster["artifacts"] = {"verify": "pinned"}
    assert parse_cluster(raw_cluster).artifacts.verify == "pinned"
    del raw_cluster["artifacts"]
    assert parse_cluster(raw_cluster).artifacts.verify == "first-use"


def test_verify_is_refused_where_it_would_mean_nothing(raw_cluster):
    raw_cluster["artifacts"] = {"source": "directory", "directory": "/srv/x", "verify": "pinned"}
    with pytest.raises(ClusterConfigError, match="artifacts.verify = 'pinned': only applies to "
                                                 "artifacts.source: upstream, not directory"):
        parse_cluster(raw_cluster)


def test_parse_sha256sums_accepts_binary_markers_and_comments():
    text = "# comment\n" + "a" * 64 + "  ./x/y.tgz\n" + "B" * 64 + " *z\n\n"
    assert parse_sha256sums(text) == {"x/y.tgz": "a" * 64, "z": "b" * 64}


def test_digest_for_reads_every_upstream_format():
    h = "c" * 64
    assert _digest_for(h + "\n", "kubelet") == h  # dl.k8s.io: bare hash
    assert _digest_for(f"{'d' * 64}  etcd-v3.6.16-linux-arm64.tar.gz\n{h}  etcd-v3.6.16-linux-amd64.tar.gz\n",
                       "etcd-v3.6.16-linux-amd64.tar.gz") == h  # etcd SHA256SUMS
    assert _digest_for(f"{h} *runc.amd64\n{'e' * 64} *runc.arm64\n", "runc.amd64") == h  # runc.sha256sum
    assert _digest_for("nothing here", "x") is None


def test_pin_upstream_and_merge(tmp_path):
    cluster = load_cluster()
    asked = []

    def fetch(url):
        asked.append(url)
        name = url.rsplit("/", 1)[-1]
        if name in ("SHA256SUMS", "runc.sha256sum"):
            return "".join(f"{hashlib.sha256(a.url(getattr(cluster.versions, a.component)).encode()).hexdigest()}"
                           f"  {a.url(getattr(cluster.versions, a.component)).rsplit('/', 1)[-1]}\n"
                           for a in CATALOGUE)
        return hashlib.sha256(url.removesuffix(".sha256").removesuffix(".sha256sum").encode()).hexdigest()

    pins = pin_upstream(cluster, fetch)
    assert len(pins) == len({a.path(getattr(cluster.versions, a.component)) for a in CATALOGUE})
    assert any(u.endswith("kube-apiserver.sha256") for u in asked)
    table = tmp_path / "table.sha256"
    table.write_text("# header kept\n" + "f" * 64 + "  kubernetes/v1.0.0/bin/linux/amd64/kubelet\n")
    write_pins(pins, table)
    text = table.read_text()
    assert text.startswith("# header kept\n") and "kubernetes/v1.0.0" in text
    assert parse_sha256sums(text)["etcd/v3.6.16/etcd-v3.6.16-linux-amd64.tar.gz"] == pins[
        "etcd/v3.6.16/etcd-v3.6.16-linux-amd64.tar.gz"]
