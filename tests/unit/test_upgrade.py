"""Rolling upgrades: the version-skew refusals, when a node is drained, and the host-side reads
they rest on (run for real here with stand-in binaries)."""

from __future__ import annotations

import doctest
import hashlib
import json

import pytest

import kthw.upgrade
from kthw.upgrade import limit_refusal, parse_version, skew_refusal, wants_drain
from tests.unit.test_facts import run_host_state

API = "/usr/local/bin/kube-apiserver"


def test_doctests():
    assert doctest.testmod(kthw.upgrade, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


@pytest.mark.parametrize("running, wanted", [
    ("Kubernetes v1.36.3", "v1.37.2"),   # one minor up
    ("Kubernetes v1.36.3", "v1.36.1"),   # a patch down is allowed
    ("Kubernetes v1.36.3", "v1.36.3"),
    ("", "v1.37.2"),                      # a binary that does not say: nothing to compare
])
def test_accepted_version_changes(running, wanted):
    assert skew_refusal("master-1", API, running, wanted) is None


@pytest.mark.parametrize("running, wanted, says", [
    ("Kubernetes v1.35.4", "v1.37.2", "two minor versions at once"),
    ("Kubernetes v1.34.4", "v1.37.2", "3 minor versions at once"),
    ("Kubernetes v1.37.2", "v1.36.3", "an older minor version"),
    ("Kubernetes v1.36.3", "v2.0.0", "another major version"),
])
def test_refused_version_changes_say_what_and_how_to_fix(running, wanted, says):
    why = skew_refusal("master-1", API, running, wanted)
    assert says in why and why.startswith(f"master-1: {API} runs ") and "Nothing was changed. Fix:" in why


def test_etcd_follows_its_own_versions_key():
    why = skew_refusal("master-2", "/usr/local/bin/etcd", "etcd Version: 3.5.21\nGit SHA: x", "v3.7.0")
    assert "versions.etcd" in why and "etcd upgrades one minor version at a time" in why
    assert parse_version("etcd Version: 3.6.16") == (3, 6, 16)


def test_a_node_upgrade_needs_every_master_in_the_run():
    assert limit_refusal("worker-1", [], ["master-1"], {"worker-1"}) is None  # not upgrading
    assert limit_refusal("worker-1", ["kubelet"], ["master-1"], {"master-1", "worker-1"}) is None
    why = limit_refusal("worker-1", ["kubelet", "kube-proxy"], ["master-1", "master-2"], {"worker-1", "master-1"})
    assert "master-2 is not in this run" in why and "--limit master-1,master-2,worker-1" in why


def test_drain_when_the_kubelet_or_the_runtime_changes_version():
    node = {"kubelet": "v1.37.2", "runtime": "containerd://2.2.9"}
    assert not wants_drain(node, "v1.37.2", "v2.2.9")
    assert wants_drain(node, "v1.37.2", "v2.2.10")
    assert wants_drain({**node, "kubelet": "v1.36.3"}, "v1.37.2", "v2.2.9")


def test_host_state_asks_the_version_only_of_a_binary_about_to_change(tmp_path):
    binary = tmp_path / "kube-apiserver"
    binary.write_text("#!/bin/sh\necho Kubernetes v1.36.3\n")
    binary.chmod(0o755)
    same = hashlib.sha256(binary.read_bytes()).hexdigest()
    spec = {"files": [str(binary)], "hash_cache": str(tmp_path / "cache.json"), "versions": {str(binary): same}}
    assert run_host_state(spec, tmp_path)["versions"] == {}
    spec["versions"] = {str(binary): "0" * 64}
    assert run_host_state(spec, tmp_path)["versions"] == {str(binary): "Kubernetes v1.36.3"}


def test_host_state_reads_the_node_objects_once(tmp_path):
    nodes = {"items": [
        {"metadata": {"name": "master-1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
         "spec": {}, "status": {"nodeInfo": {"kubeletVersion": "v1.36.3", "containerRuntimeVersion": "containerd://2.2.9"},
                                "conditions": [{"type": "Ready", "status": "True"}]}},
        {"metadata": {"name": "worker-1", "annotations": {"kthw.io/drained-for-upgrade": "true"}},
         "spec": {"unschedulable": True}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
    ]}
    kubectl = tmp_path / "kubectl"
    calls = tmp_path / "calls"
    kubectl.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\ncat <<'EOF'\n{json.dumps(nodes)}\nEOF\n")
    kubectl.chmod(0o755)
    arg = {"binary": str(kubectl), "kubeconfig": "x", "role_label": "node-role.kubernetes.io/control-plane",
           "drain_mark": "kthw.io/drained-for-upgrade"}
    spec = {"questions": {"node_names": arg, "control_plane_labelled": arg, "node_status": arg}}
    state = run_host_state(spec, tmp_path)
    assert state["node_names"] == ["master-1", "worker-1"] and state["control_plane_labelled"] == ["master-1"]
    assert state["node_status"]["master-1"] == {"kubelet": "v1.36.3", "runtime": "containerd://2.2.9", "ready": True,
                                                "unschedulable": False, "drained": False}
    assert state["node_status"]["worker-1"]["drained"] and not state["node_status"]["worker-1"]["ready"]
    assert len(calls.read_text().splitlines()) == 1
