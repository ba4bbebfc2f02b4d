"""A rolling upgrade of the running cluster, v1.36.3 to v1.37.2 (both built here from the Go
module proxy), by editing versions.kubernetes and running the deploy: etcd and the control plane
one master at a time, then each node drained, upgraded and uncordoned in turn, while a web
workload answers through its NodePort on every worker. Going back a minor version is refused."""

from __future__ import annotations

import json
import sys
import time

import pytest
import yaml

from kthw.model import load_cluster
from tests.lab.lab import Lab, RequestLoop, reference_only, sh
from tests.lab.test_cluster import ADMIN
from tests.lab.workloads import NodePortLoop, web_service

NEW = "v1.37.2"
def versions(lab: Lab, node: str, binaries: str) -> set[str]:
    out = lab.script(node, f"for b in {binaries}; do /usr/local/bin/$b --version; done")
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def deploy(cluster_file, label: str, lab: Lab, check: bool = True):
    start = time.monotonic()
    out = sh([sys.executable, "-m", "pyinfra", "-y", "inventory.py", "deploy.py"], check=check,
             env={"KTHW_CLUSTER": str(cluster_file)})
    lab.timings[label] = time.monotonic() - start
    return out


@pytest.mark.day_two
def test_a_rolling_upgrade_keeps_the_nodeport_answering(lab):
    reference_only(lab)
    old = str(lab.cluster.versions.kubernetes)
    raw = yaml.safe_load(lab.cluster_file.read_text())
    raw["versions"]["kubernetes"] = NEW
    newer = lab.cluster_file.with_name(lab.cluster_file.stem + "-upgraded.yaml")
    newer.write_text(yaml.safe_dump(raw, sort_keys=False))
    # the new version's binaries, built like the first (cached once built: ~7 min cold)
    sh(["lab/artifacts/build", "kubernetes"], env={"KTHW_CLUSTER": str(newer)}, timeout=5400)

    manifest, urls = web_service(lab, "kthw-upgrade-web")
    # no bare pod left by another test (a drain stops at a pod no controller would recreate)
    lab.kubectl("delete", "pods", "--all", "-n", "default", "--field-selector=status.phase!=Running",
                "--wait=false", check=False)

    with NodePortLoop(urls) as web, RequestLoop(lab) as api:
        deploy(newer, f"upgrade {old} -> {NEW}", lab)
    print(f"\nupgrade {old} -> {NEW}: {len(web.failures)} of {web.requests} NodePort requests failed, "
          f"{len(api.failures)} of {api.requests} API requests through the load balancer failed; "
          f"deploy {lab.timings[f'upgrade {old} -> {NEW}']:.0f} s")
    assert web.failures == [] and web.requests > 100, web.failures[:20]
    assert api.failures == [], api.failures[:20]

    # the lab is on the new version from here on (its cluster file says so, for any later test)
    older = lab.cluster_file.with_name(lab.cluster_file.stem + "-before-upgrade.yaml")
    older.write_text(lab.cluster_file.read_text())
    lab.cluster_file.write_text(newer.read_text())
    lab.cluster = load_cluster(lab.cluster_file)

    # everything runs the new version, no node is left cordoned or marked
    nodes = json.loads(lab.kubectl("get", "nodes", "-o", "json"))["items"]
    assert {n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes} == {NEW}
    assert not [n["metadata"]["name"] for n in nodes if n["spec"].get("unschedulable")
                or "kthw.io/drained-for-upgrade" in n["metadata"].get("annotations", {})]
    for m in lab.cluster.masters:
        binaries = "kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"
        assert versions(lab, m.name, binaries) == {NEW}
        assert f'"gitVersion": "{NEW}"' in lab.ssh(m.name, f"{ADMIN} get --raw /version")
    for w in lab.cluster.workers:
        assert versions(lab, w.name, "kubelet kube-proxy") == {NEW}
    assert lab.kubectl("get", "deployment", "kthw-upgrade-web", "-o", "jsonpath={.status.readyReplicas}") == "2"
    # converged: the next run changes nothing
    assert not [name for name, p in lab.plan().items() if p["hosts_with_change"]]

    # going back a minor version is refused before any host is touched
    before = lab.script("master-1", "systemctl show -p ExecMainStartTimestampMonotonic --value kube-apiserver")
    out = deploy(older, "refused downgrade", lab, check=False)
    assert out.returncode != 0 and "an older minor version" in out.stdout + out.stderr
    assert lab.script("master-1", "systemctl show -p ExecMainStartTimestampMonotonic --value kube-apiserver") == before
    assert versions(lab, "worker-1", "kubelet") == {NEW}
    lab.kubectl("delete", "-f", manifest, "--wait=false", check=False)
