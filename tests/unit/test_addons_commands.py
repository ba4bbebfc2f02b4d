"""Shell commands of the addons, run for real against a stand-in kubectl that logs its calls."""

from __future__ import annotations

import subprocess

import pytest

from kthw.commands import KUBECTL
from kthw.paths import CLUSTER_CA
from operations.addons import TRUST_CURRENT_OR_NONE, TRUST_PUBLISHED, label_control_plane


def fake_kubectl(tmp_path, get_fails_first: int = 0):
    log, count = tmp_path / "calls", tmp_path / "count"
    script = tmp_path / "kubectl"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
case "$1" in get) [ "$n" -ge {get_fails_first} ] ;; *) exit 0 ;; esac
""")
    script.chmod(0o755)
    return str(script), log


def test_labels_the_masters_once_their_nodes_exist(tmp_path):
    kubectl, log = fake_kubectl(tmp_path, get_fails_first=2)
    cmd = label_control_plane(["master-1", "master-2"], kubectl=kubectl, timeout=5).replace("sleep 0.5", "sleep 0")
    subprocess.run(["sh", "-c", cmd], check=True)
    calls = log.read_text().splitlines()
    assert calls[:3] == ["get node master-1 master-2"] * 3  # waited while the nodes were missing
    assert calls[3:] == ["label node master-1 master-2 node-role.kubernetes.io/control-plane= --overwrite"]


def test_fails_without_labelling_when_the_nodes_never_appear(tmp_path):
    kubectl, log = fake_kubectl(tmp_path, get_fails_first=99)
    cmd = label_control_plane(["master-1"], kubectl=kubectl, timeout=1).replace("sleep 0.5", "sleep 0")
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    assert out.returncode != 0 and "Node objects of master-1 not ready" in out.stderr
    assert not any(c.startswith("label") for c in log.read_text().splitlines())


BUNDLE = "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(("wait", "published", "goes_on"), [
    (TRUST_CURRENT_OR_NONE, None, True),  # a new cluster: nothing published yet, nothing to wait for
    (TRUST_CURRENT_OR_NONE, BUNDLE, True),
    (TRUST_CURRENT_OR_NONE, "old bundle\n", False),  # a CA change not yet published
    (TRUST_PUBLISHED, BUNDLE, True),
    (TRUST_PUBLISHED, None, False),  # a running cluster's add-on changed: wait for the bundle
    (TRUST_PUBLISHED, "old bundle\n", False),
])
def test_add_ons_wait_for_the_published_ca_bundle_only_when_one_is_stale(tmp_path, wait, published, goes_on):
    ca = tmp_path / "ca.crt"
    ca.write_text(BUNDLE)
    kubectl = tmp_path / "kubectl"  # kube-root-ca.crt as given: -o name prints its name, jsonpath its data
    data = tmp_path / "data"
    if published is not None:
        data.write_text(published)
    kubectl.write_text(f"""#!/bin/sh
[ -e {data} ] || {{ case "$*" in *--ignore-not-found*) exit 0 ;; *) echo NotFound >&2; exit 1 ;; esac; }}
case "$*" in *"-o name"*) echo configmap/kube-root-ca.crt ;; *) cat {data} ;; esac
""")
    kubectl.chmod(0o755)
    cmd = (wait.replace(KUBECTL, str(kubectl)).replace(CLUSTER_CA, str(ca))
           .replace("seq 120", "seq 2").replace("sleep 1", "sleep 0"))
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    assert (out.returncode == 0) == goes_on, out.stderr
