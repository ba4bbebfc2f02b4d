"""Adopting a running cluster's identity into an empty (or foreign) local state."""

from __future__ import annotations

import stat

import pytest
import yaml
from cryptography import x509

from kthw.adopt import ON_A_MASTER, WEAVE_MANIFEST, adopt
from kthw.model import DEFAULT_CLUSTER_FILE
from kthw.pki import PkiError, ensure_pki
from tests.conftest import make_cluster


@pytest.fixture
def running_and_fresh(tmp_path):
    """The running cluster's PKI (as its masters hold it) and a second operator's fresh one."""
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    running = make_cluster(raw, tmp_path / "running")
    ensure_pki(running)
    fresh = make_cluster(raw, tmp_path / "fresh")
    ensure_pki(fresh)  # a clone's first `kthw pki`: a new, different identity
    on_master = {path: (running.pki_dir / name).read_bytes() for name, path in ON_A_MASTER.items()}
    password = (running.pki_dir / "weave-password").read_text().strip()
    on_master[WEAVE_MANIFEST] = f'stringData:\n  weave-passwd: "{password}"\n'.encode()
    asked = []

    def fetch(node, paths):
        asked.append((node.name, paths))
        return {p: on_master[p] for p in paths if p in on_master}
    return running, fresh, fetch, asked


def test_adopting_copies_the_identity_and_the_leafs_follow(running_and_fresh):
    running, fresh, fetch, asked = running_and_fresh
    result = adopt(fresh, fetch)
    assert {n for n, what in result.items() if what.startswith("adopted")} == {*ON_A_MASTER, "weave-password"}
    for name in (*ON_A_MASTER, "weave-password"):
        assert (fresh.pki_dir / name).read_bytes() == (running.pki_dir / name).read_bytes(), name
        if name.endswith(".key") or name in ("encryption-config.yaml", "weave-password"):
            assert stat.S_IMODE((fresh.pki_dir / name).stat().st_mode) == 0o600, name
    assert {node for node, _ in asked} == {"master-1"}
    # the local identity it replaced is kept aside, not deleted
    backups = list(fresh.pki_dir.glob("replaced-*"))
    assert len(backups) == 1 and (backups[0] / "ca.key").exists()
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o700
    # every leaf is then re-issued by the adopted CAs
    report = ensure_pki(fresh)
    assert report.actions["kube-apiserver"].startswith("re-issued")
    ca = x509.load_pem_x509_certificate((running.pki_dir / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((fresh.pki_dir / "kube-apiserver.crt").read_bytes())
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    # adopting again changes nothing
    assert set(adopt(fresh, fetch).values()) == {"already the same"}


def test_a_key_that_does_not_match_its_certificate_is_not_adopted(running_and_fresh):
    running, fresh, fetch, _ = running_and_fresh
    before = (fresh.pki_dir / "ca.crt").read_bytes()

    def mixed(node, paths):
        got = fetch(node, paths)
        if "/var/lib/kubernetes/pki/ca.key" in got:
            got["/var/lib/kubernetes/pki/ca.key"] = (fresh.pki_dir / "ca.key").read_bytes()
        return got
    with pytest.raises(PkiError, match="ca.key on the master does not belong to ca.crt"):
        adopt(fresh, mixed)
    assert (fresh.pki_dir / "ca.crt").read_bytes() == before  # nothing written


def test_only_a_master_can_be_the_source(running_and_fresh):
    _, fresh, fetch, _ = running_and_fresh
    with pytest.raises(PkiError, match="not a master"):
        adopt(fresh, fetch, fresh.node("worker-1"))


def test_adopting_brings_back_the_nodes_pod_subnets(running_and_fresh):
    # finding 5: a second operator machine gave nodes the first free subnets after a worker had
    # left, moving the running nodes' pods (bridge CNI) or their kubelets' podCIDR
    from kthw.model import pod_subnets_text
    from kthw.paths import POD_SUBNETS_RECORD

    running, fresh, fetch, _ = running_and_fresh
    kept = {"master-1": "10.244.255.0/24", "master-2": "10.244.254.0/24", "worker-1": "10.244.0.0/24",
            "worker-2": "10.244.2.0/24"}  # the worker that had 10.244.1.0/24 left the cluster earlier

    def with_record(node, paths):
        got = fetch(node, paths)
        if POD_SUBNETS_RECORD in paths:
            got[POD_SUBNETS_RECORD] = pod_subnets_text(kept).encode()
        return got
    assert adopt(fresh, with_record)["pod-subnets.yaml"] == "adopted"
    # the next model read on this machine keeps every node where the running cluster has it
    again = make_cluster(yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()), fresh.state_dir.parent)
    assert {n.name: str(n.pod_cidr) for n in again.kubelet_nodes} == kept
    assert adopt(fresh, with_record)["pod-subnets.yaml"] == "already the same"
