"""Workers come and go by editing the cluster file: a worker added to it joins with a rerun, a
worker taken out of it (its machine still up) is drained and its Node deleted; either way
nothing else restarts and the pods on the other workers are undisturbed."""

from __future__ import annotations

import json
import sys
import time

import pytest
import yaml

from tests.lab.lab import LAB_DIR, VAGRANT_ENV, Lab, reference_only, sh
from tests.lab.test_cluster import UNITS as UNIT_LISTS
from tests.lab.test_cluster import smoke_image

NEW = {"name": "worker-3", "role": "worker", "ip": "192.168.56.23", "cpus": 1, "memory": 1024}
UNITS = {role: " ".join(units) for role, units in UNIT_LISTS.items()}


def started(lab: Lab) -> dict[str, str]:
    """Every service's start time (monotonic: all nodes share this machine's kernel), per node."""
    out = {}
    for n in lab.cluster.nodes:
        out[n.name] = lab.script(n.name, f"for u in {UNITS[n.role]}; do "
                                 "echo $u $(systemctl show -p ExecMainStartTimestampMonotonic --value $u); done")
    return out


def pods(lab: Lab, *selector: str) -> dict[str, tuple[str, str, int]]:
    """{pod: (node, uid, restarts)}"""
    items = json.loads(lab.kubectl("get", "pods", "-A", "-o", "json", *selector))["items"]
    return {p["metadata"]["name"]: (p["spec"].get("nodeName", ""), p["metadata"]["uid"],
                                    sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", [])))
            for p in items}


def deploy(cluster_file, label: str, lab: Lab) -> None:
    start = time.monotonic()
    sh([sys.executable, "-m", "pyinfra", "-y", "inventory.py", "deploy.py"], env={"KTHW_CLUSTER": str(cluster_file)})
    lab.timings[label] = time.monotonic() - start


@pytest.mark.day_two
def test_a_worker_joins_and_leaves_without_disturbing_the_others(lab):
    reference_only(lab)
    raw = yaml.safe_load(lab.cluster_file.read_text())
    raw["nodes"].append(NEW)
    grown = lab.cluster_file.with_name(lab.cluster_file.stem + "-grown.yaml")
    grown.write_text(yaml.safe_dump(raw, sort_keys=False))
    lab.kubectl("create", "deployment", "kthw-scale-web", f"--image={smoke_image(lab)}", "--replicas=2", "--",
                "sleep", "86400")
    lab.kubectl("rollout", "status", "deployment/kthw-scale-web", "--timeout=120s")
    before_units, before_pods = started(lab), pods(lab)
    try:
        sh(["lab/up"], env={"KTHW_CLUSTER": str(grown)}, timeout=900)
        deploy(grown, "deploy with worker-3 added", lab)
        # Ready once its Weave Net pod has set up the pod network there
        lab.wait("worker-3 Ready", lambda: lab.kubectl("get", "node", "worker-3", "-o",
                 "jsonpath={.status.conditions[?(@.type=='Ready')].status}") == "True", timeout=180)
        # a pod on the newcomer reaches the pods on the other workers
        web_ip = lab.kubectl("get", "pods", "-l", "app=kthw-scale-web", "-o", "jsonpath={.items[0].status.podIP}")
        overrides = json.dumps({"spec": {"nodeName": "worker-3"}})
        lab.kubectl("run", "kthw-on-worker-3", f"--image={smoke_image(lab)}", "--restart=Never",
                    f"--overrides={overrides}", "--", "ping", "-c", "1", "-W", "5", web_ip)
        lab.wait("the pod on worker-3 to reach the others", lambda: lab.kubectl(
            "get", "pod", "kthw-on-worker-3", "-o", "jsonpath={.status.phase}") == "Succeeded", timeout=120)
        lab.kubectl("delete", "pod", "kthw-on-worker-3")
        assert started(lab) == before_units  # nothing restarted anywhere else
        assert {k: v for k, v in pods(lab).items() if v[0] != "worker-3"} == before_pods  # no pod moved or restarted

        # taken out of the file again, its machine still up: drained and deleted, nothing else touched
        deploy(lab.cluster_file, "deploy with worker-3 removed", lab)
        nodes = lab.kubectl("get", "nodes", "-o", "name").split()
        assert "node/worker-3" not in nodes and len(nodes) == len(lab.cluster.kubelet_nodes)
        assert started(lab) == before_units
        # its DaemonSet pods go with the Node object (the pod garbage collector, within seconds)
        lab.wait("worker-3's pods gone", lambda: pods(lab) == before_pods, timeout=120, interval=2)
        assert not [name for name, p in lab.plan().items() if p["hosts_with_change"]]
    finally:
        sh("lxc-stop --kill -n kthw-worker-3 >/dev/null 2>&1; lxc-destroy -n kthw-worker-3 >/dev/null 2>&1; true")
        sh(["vagrant", "destroy", "-f", "worker-3"], env={"KTHW_CLUSTER": str(grown), **VAGRANT_ENV}, check=False)
        config = sh(["vagrant", "ssh-config"], env={**lab.env, **VAGRANT_ENV})
        (LAB_DIR / "ssh-config").write_text(config.stdout)
        lab.kubectl("delete", "deployment", "kthw-scale-web", "--ignore-not-found")
