"""The reference topology, deployed for real: every claim here ran on real components."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.lab.lab import Lab


def smoke_image(lab: Lab) -> str:
    listing = (Path(lab.cluster.artifacts.images) / "IMAGES").read_text()
    return next(line.split()[1] for line in listing.splitlines() if "smoke/busybox" in line)


@pytest.fixture(scope="module")
def lab(default_lab) -> Lab:
    return default_lab


def test_etcd_members_started_and_healthy_over_tls(lab):
    out = lab.ssh("master-1", "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 "
                  "--cacert=/etc/etcd/ca.crt --cert=/etc/etcd/etcd-server.crt --key=/etc/etcd/etcd-server.key "
                  "member list -w json")
    members = json.loads(out)["members"]
    assert sorted(m["name"] for m in members) == ["master-1", "master-2"]
    assert all(u.startswith("https://") for m in members for u in m["peerURLs"] + m["clientURLs"])
    health = lab.ssh("master-2", "ETCDCTL_API=3 etcdctl --endpoints=https://192.168.56.11:2379,"
                     "https://192.168.56.12:2379 --cacert=/etc/etcd/ca.crt --cert=/etc/etcd/etcd-server.crt "
                     "--key=/etc/etcd/etcd-server.key endpoint health -w json")
    assert all(h["health"] for h in json.loads(health))


def test_both_apiservers_answer_through_the_load_balancer(lab):
    # Each apiserver serves its own /readyz; HAProxy's stats show both backends UP.
    for master in ("master-1", "master-2"):
        assert lab.ssh(master, "kubectl --kubeconfig /etc/kubernetes/admin.kubeconfig get --raw /readyz") == "ok"
    assert "ok" in lab.kubectl("get", "--raw", "/readyz")
    # Many requests through the LB land on both (the audit logs record them).
    for _ in range(20):
        lab.kubectl("get", "--raw", "/version")
    for master in ("master-1", "master-2"):
        assert int(lab.ssh(master, "grep -c '/version' /var/log/kubernetes/audit.log || true").strip() or 0) > 0


def test_one_leader_each_for_scheduler_and_controller_manager(lab):
    for lease in ("kube-scheduler", "kube-controller-manager"):
        holder = lab.kubectl("-n", "kube-system", "get", "lease", lease, "-o",
                             "jsonpath={.spec.holderIdentity}")
        assert re.match(r"^master-[12]_", holder), holder


def test_all_nodes_ready(lab):
    def ready():
        nodes = json.loads(lab.kubectl("get", "nodes", "-o", "json"))["items"]
        states = {n["metadata"]["name"]: next(c["status"] for c in n["status"]["conditions"]
                                              if c["type"] == "Ready") for n in nodes}
        return states if states == {"worker-1": "True", "worker-2": "True"} else None
    lab.wait("both workers Ready", ready, timeout=300)


def test_secrets_are_encrypted_at_rest(lab):
    lab.kubectl("create", "secret", "generic", "kthw-e2e", "--from-literal=mykey=mydata", check=False)
    raw = lab.ssh("master-1", "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/ca.crt "
                  "--cert=/etc/etcd/etcd-server.crt --key=/etc/etcd/etcd-server.key "
                  "get /registry/secrets/default/kthw-e2e --print-value-only | head -c 40 | od -c")
    flat = re.sub(r"\s+|\d{7}", "", raw)
    assert "k8s:enc:secretbox:v1:key1" in flat, raw
    lab.kubectl("delete", "secret", "kthw-e2e")


SERVE = "mkdir -p /www && hostname > /www/index.html && echo serving && exec httpd -f -v -p 8080 -h /www"


@pytest.fixture(scope="module")
def web(lab):
    image = smoke_image(lab)
    manifest = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {{matchLabels: {{app: web}}}}
              topologyKey: kubernetes.io/hostname
      containers:
        - name: web
          image: {image}
          imagePullPolicy: Never
          command: [sh, -c, '{SERVE}']
          ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  containers:
    - name: client
      image: {image}
      imagePullPolicy: Never
      command: [sleep, "3600"]
"""
    path = lab.cluster_file.parent / "smoke.yaml"
    path.write_text(manifest)
    lab.kubectl("apply", "-f", str(path))
    lab.kubectl("rollout", "status", "deployment/web", "--timeout=240s", timeout=260)
    lab.kubectl("wait", "--for=condition=Ready", "pod/client", "--timeout=120s", timeout=140)
    yield
    lab.kubectl("delete", "-f", str(path), "--wait=false", check=False)


def test_deployment_spreads_over_both_workers(lab, web):
    pods = json.loads(lab.kubectl("get", "pods", "-l", "app=web", "-o", "json"))["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["worker-1", "worker-2"]


def test_nodeport_answers_on_every_worker(lab, web):
    port = lab.kubectl("get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}")
    names = set()
    for worker in ("192.168.56.21", "192.168.56.22"):
        for _ in range(6):
            names.add(lab.ssh("loadbalancer", f"curl -s --max-time 5 http://{worker}:{port}/").strip())
    pods = set(lab.kubectl("get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}").split())
    assert names == pods  # every worker's NodePort reaches pods on both workers


def test_logs_and_exec(lab, web):
    pod = lab.kubectl("get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}")
    assert "serving" in lab.kubectl("logs", pod)
    assert lab.kubectl("exec", pod, "--", "cat", "/www/index.html").strip() == pod


def test_dns_resolves_services_through_coredns(lab, web):
    lab.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=180s", timeout=200)
    out = lab.kubectl("exec", "client", "--", "nslookup", "kubernetes.default.svc.cluster.local")
    assert "10.96.0.1" in out
    out = lab.kubectl("exec", "client", "--", "nslookup", "web.default.svc.cluster.local")
    web_ip = lab.kubectl("get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}")
    assert web_ip in out


def test_pods_on_different_workers_reach_each_other(lab, web):
    pods = json.loads(lab.kubectl("get", "pods", "-l", "app=web", "-o", "json"))["items"]
    client_node = json.loads(lab.kubectl("get", "pod", "client", "-o", "json"))["spec"]["nodeName"]
    remote = next(p for p in pods if p["spec"]["nodeName"] != client_node)
    out = lab.kubectl("exec", "client", "--", "wget", "-qO-", "-T", "5", f"http://{remote['status']['podIP']}:8080/")
    assert out.strip() == remote["metadata"]["name"]
    assert lab.kubectl("exec", "client", "--", "wget", "-qO-", "-T", "5", "http://web/").strip()


def test_second_run_changes_nothing(lab):
    p = lab.plan()
    assert [n for n, op in p.items() if op["hosts_with_change"]] == []
    out = lab.deploy("--json", label="no-op rerun")
    results = json.loads(out.stdout)["results"]
    assert results is not None


def test_failover_when_an_apiserver_stops(lab):
    lab.ssh("master-1", "systemctl stop kube-apiserver")
    try:
        lab.wait("HAProxy to route around master-1", lambda: "ok" in lab.kubectl("get", "--raw", "/readyz"),
                 timeout=60)
        for _ in range(10):
            assert lab.kubectl("get", "nodes", "-o", "name")
    finally:
        lab.ssh("master-1", "systemctl start kube-apiserver")
    lab.wait("master-1 to serve again", lambda: lab.ssh(
        "master-1", "kubectl --kubeconfig /etc/kubernetes/admin.kubeconfig get --raw /readyz", check=False) == "ok",
        timeout=120)
