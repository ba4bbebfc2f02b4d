"""Masters come and go by editing the cluster file, while the cluster serves: a master added
joins etcd (member add, then it starts as existing), gets its apiserver behind HAProxy and the
apiserver certificate the new address; a master taken out is dropped by HAProxy, then removed
from etcd. Reads and writes through the load balancer run throughout."""

from __future__ import annotations

import json
import sys
import time

import pytest
import yaml

from tests.lab.lab import LAB_DIR, VAGRANT_ENV, Lab, RequestLoop, reference_only, sh
from tests.lab.test_cluster import ADMIN

NEW = {"name": "master-3", "role": "master", "ip": "192.168.56.13", "cpus": 2, "memory": 2048}
ETCDCTL = ("ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/etcd-ca.crt "
           "--cert=/etc/etcd/etcd-server.crt --key=/etc/etcd/etcd-server.key")


def deploy(cluster_file, label: str, lab: Lab) -> None:
    start = time.monotonic()
    sh([sys.executable, "-m", "pyinfra", "-y", "inventory.py", "deploy.py"], env={"KTHW_CLUSTER": str(cluster_file)})
    lab.timings[label] = time.monotonic() - start


def members(lab: Lab) -> list[str]:
    listed = json.loads(lab.ssh("master-1", f"{ETCDCTL} member list -w json"))["members"]
    return sorted(m.get("name", "") for m in listed)


@pytest.mark.day_two
def test_a_master_joins_and_leaves_while_the_cluster_serves(lab):
    reference_only(lab)
    raw = yaml.safe_load(lab.cluster_file.read_text())
    raw["nodes"].append(NEW)
    grown = lab.cluster_file.with_name(lab.cluster_file.stem + "-three-masters.yaml")
    grown.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        sh(["lab/up"], env={"KTHW_CLUSTER": str(grown)}, timeout=900)
        with RequestLoop(lab) as loop:
            deploy(grown, "deploy with master-3 added", lab)
            assert members(lab) == ["master-1", "master-2", "master-3"]
            health = lab.ssh("master-1", f"{ETCDCTL} endpoint health --cluster -w json")
            assert [h["health"] for h in json.loads(health)] == [True, True, True], health
            assert lab.ssh("master-3", f"{ADMIN} get --raw /readyz").strip() == "ok"
            assert "192.168.56.13:6443" in lab.ssh("loadbalancer", "cat /etc/haproxy/haproxy.cfg")
            for unit in ("kube-controller-manager", "kube-scheduler"):
                assert lab.ssh("master-3", f"systemctl is-active {unit}").strip() == "active"

            deploy(lab.cluster_file, "deploy with master-3 removed", lab)
            assert members(lab) == ["master-1", "master-2"]
            assert "192.168.56.13" not in lab.ssh("loadbalancer", "cat /etc/haproxy/haproxy.cfg")
            lab.wait("master-3's Node object gone", lambda: "node/master-3" not in lab.kubectl(
                "get", "nodes", "-o", "name"), timeout=60)
            # its DaemonSet pods go with the Node object (the pod garbage collector, within a minute)
            lab.wait("master-3's pods gone", lambda: "master-3" not in lab.kubectl(
                "get", "pods", "-A", "-o", "jsonpath={.items[*].spec.nodeName}"), timeout=120, interval=2)
        print(f"\nmaster-3 added and removed: {loop.requests} requests through the load balancer, "
              f"{len(loop.failures)} failed")
        assert loop.failures == [], loop.failures
        assert not [name for name, p in lab.plan().items() if p["hosts_with_change"]]
    finally:
        sh("lxc-stop --kill -n kthw-master-3 >/dev/null 2>&1; lxc-destroy -n kthw-master-3 >/dev/null 2>&1; true")
        sh(["vagrant", "destroy", "-f", "master-3"], env={"KTHW_CLUSTER": str(grown), **VAGRANT_ENV}, check=False)
        config = sh(["vagrant", "ssh-config"], env={**lab.env, **VAGRANT_ENV})
        (LAB_DIR / "ssh-config").write_text(config.stdout)
