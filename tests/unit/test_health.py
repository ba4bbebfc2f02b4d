"""`python -m kthw health`: the answers the nodes give, judged into rows; one fault, one failing check.

The samples have the shape the tools print (written from their sources, not captured from a
cluster): etcdctl 3.6's `endpoint status -w json` and `alarm list -w json`, kubectl's `-n
kube-system get nodes,leases,endpointslices -o json` List, Weave Net 2.8's /report Router
connections (mesh's LocalConnectionStatus), kthw/hostcerts.py's certificate read. The probe that runs on the
nodes (kthw/remote/health_probe.py) is tested here too, on this machine, against local stand-ins.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import http.server
import importlib.util
import json
import shlex
import socket
import struct
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kthw import health
from kthw.health import FAIL, OK, WARN, Answers, HealthConfigError, Row, Snapshot
from kthw.ssh import SshError
from tests.conftest import make_cluster, scaled

NOW = dt.datetime(2026, 12, 6, 10, 0, 0, tzinfo=dt.UTC)
PROBE = Path(health.__file__).parent / "remote" / "health_probe.py"

# etcdctl endpoint status -w json, on master-1 (etcd 3.6.16), as it prints it
ETCD_STATUS = json.loads(
    '[{"Endpoint":"https://127.0.0.1:2379","Status":{"header":{"cluster_id":14841639068965178418,'
    '"member_id":10276657743932975437,"revision":51234,"raft_term":4},"version":"3.6.16","dbSize":7364608,'
    '"leader":10276657743932975437,"raftIndex":60123,"raftTerm":4,"raftAppliedIndex":60123,'
    '"dbSizeInUse":3616768,"storageVersion":"3.6.0","dbSizeQuota":2147483648}}]')
# etcdctl alarm list -w json: none (the list is left out), then a NOSPACE alarm of master-2's member
ALARMS_NONE = json.loads('{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,'
                         '"revision":51234,"raft_term":4}}')
ALARMS_NOSPACE = json.loads('{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,'
                            '"revision":51234,"raft_term":4},"alarms":[{"memberID":12599101046484599070,"alarm":1}]}')
MEMBER_IDS = {"master-1": 10276657743932975437, "master-2": 12599101046484599070, "master-3": 4200914632105123456}

# kubectl -n kube-system get nodes,leases.coordination.k8s.io,endpointslices.discovery.k8s.io -o json
# (one item of each kind; the others are made from them)
NODE = json.loads("""{
  "apiVersion": "v1", "kind": "Node",
  "metadata": {"name": "worker-1", "uid": "4f2b8d0e-3c55-4a4e-9d7c-1c1d7e0f3a11", "resourceVersion": "48211",
    "creationTimestamp": "2026-12-06T08:01:12Z",
    "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": "worker-1", "kubernetes.io/os": "linux"},
    "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
  "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
  "status": {
    "addresses": [{"address": "192.168.56.21", "type": "InternalIP"}, {"address": "worker-1", "type": "Hostname"}],
    "allocatable": {"cpu": "1", "memory": "916Mi", "pods": "110"},
    "capacity": {"cpu": "1", "memory": "1Gi", "pods": "110"},
    "conditions": [
      {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
       "message": "kubelet has sufficient memory available",
       "lastHeartbeatTime": "2026-12-06T09:59:40Z", "lastTransitionTime": "2026-12-06T08:01:12Z"},
      {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
       "message": "kubelet has no disk pressure",
       "lastHeartbeatTime": "2026-12-06T09:59:40Z", "lastTransitionTime": "2026-12-06T08:01:12Z"},
      {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
       "message": "kubelet has sufficient PID available",
       "lastHeartbeatTime": "2026-12-06T09:59:40Z", "lastTransitionTime": "2026-12-06T08:01:12Z"},
      {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
       "lastHeartbeatTime": "2026-12-06T09:59:40Z", "lastTransitionTime": "2026-12-06T08:02:03Z"}],
    "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
    "nodeInfo": {"architecture": "amd64", "containerRuntimeVersion": "containerd://2.2.9", "kernelVersion": "6.18.0",
      "kubeProxyVersion": "", "kubeletVersion": "v1.36.3", "operatingSystem": "linux",
      "osImage": "Debian GNU/Linux 12 (bookworm)"}}}""")
LEASE = json.loads("""{
  "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
  "metadata": {"name": "kube-scheduler", "namespace": "kube-system", "resourceVersion": "48390",
    "creationTimestamp": "2026-12-06T08:00:31Z", "uid": "0b1e6a4e-17cf-4c3b-a0e4-5d13b1b8e3b4"},
  "spec": {"acquireTime": "2026-12-06T08:00:31.218034Z",
    "holderIdentity": "master-1_5f0c3c2e-8f7e-4d43-9c4b-0c8f1d3b2a10",
    "leaseDurationSeconds": 15, "leaseTransitions": 2, "renewTime": "2026-12-06T09:59:58.741102Z"}}""")
APISERVER_LEASE = json.loads("""{
  "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
  "metadata": {"name": "apiserver-wq7sd6ygq2ibsmxk4z3fzjyxhq", "namespace": "kube-system",
    "labels": {"apiserver.kubernetes.io/identity": "kube-apiserver", "kubernetes.io/hostname": "master-1"}},
  "spec": {"holderIdentity": "apiserver-wq7sd6ygq2ibsmxk4z3fzjyxhq_1b1d0c7e", "leaseDurationSeconds": 3600,
    "renewTime": "2026-12-06T09:59:50.000000Z"}}""")
ENDPOINT_SLICE = json.loads("""{
  "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
  "metadata": {"name": "kube-dns-7xk2p", "namespace": "kube-system", "generateName": "kube-dns-",
    "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
               "k8s-app": "kube-dns", "kubernetes.io/service-name": "kube-dns"}},
  "endpoints": [
    {"addresses": ["10.244.0.2"], "conditions": {"ready": true, "serving": true, "terminating": false},
     "nodeName": "worker-1",
     "targetRef": {"kind": "Pod", "name": "coredns-6f8b9d7c5-2lq8n", "namespace": "kube-system"}},
    {"addresses": ["10.244.1.3"], "conditions": {"ready": true, "serving": true, "terminating": false},
     "nodeName": "worker-2",
     "targetRef": {"kind": "Pod", "name": "coredns-6f8b9d7c5-vx7hs", "namespace": "kube-system"}}],
  "ports": [{"name": "dns-tcp", "port": 53, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "metrics", "port": 9153, "protocol": "TCP"}]}""")
# Weave Net's /report, Router.Connections (the probe keeps Name, NickName and Connections)
WEAVE_CONNECTION = json.loads('{"Address":"192.168.56.11:6783","Outbound":true,"State":"established",'
                              '"Info":"encrypted   sleeve 9a:1f:22:4c:8e:01(master-1) encrypted=true mtu=1376",'
                              '"Attrs":{"encrypted":true,"mtu":1376,"name":"sleeve"}}')
WEAVE_FAILED = json.loads('{"Address":"192.168.56.22:6783","Outbound":true,"State":"failed",'
                          '"Info":"dial tcp4 :0->192.168.56.22:6783: i/o timeout, retry: 2026-12-06 10:01:12"}')
SERVICES = {  # systemctl show, as the probe returns it: [ActiveState, SubState, UnitFileState]
    "loadbalancer": {"haproxy": ["active", "running", "enabled"], "keepalived": ["inactive", "dead", "disabled"]},
    "master": {**{u: ["active", "running", "enabled"] for u in (
        "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "haproxy", "containerd", "kubelet",
        "kube-proxy")},
        # the snapshot timer between two runs, and its oneshot service after one (no [Install]: static)
        "kthw-etcd-snapshot.timer": ["active", "waiting", "enabled"],
        "kthw-etcd-snapshot": ["inactive", "dead", "static"]},
    "worker": {u: ["active", "running", "enabled"] for u in ("haproxy", "containerd", "kubelet", "kube-proxy")},
}
READY = {"status": 200, "body": "ok"}
# Each master's scheduled snapshots at NOW (backup.every 6h, keep 8, as shipped): master-1's timer
# fires at 00:00, 06:00, 12:00 and 18:00 UTC, master-2's three hours later, each run after a random
# delay of up to 18 min (a tenth of the spacing); the time in a name is when its run started.
STAMPS = {
    "master-1": ["20261204T120447Z", "20261204T180916Z", "20261205T000158Z", "20261205T061233Z", "20261205T120005Z",
                 "20261205T181702Z", "20261206T000839Z", "20261206T060231Z"],
    "master-2": ["20261204T150311Z", "20261204T210744Z", "20261205T031509Z", "20261205T090122Z", "20261205T151048Z",
                 "20261205T210357Z", "20261206T030926Z", "20261206T090412Z"],
}


def listing(stamps: list[str], *more: str) -> list[str]:
    """/var/lib/etcd-snapshots as the probe lists it (sorted names): the script's lock file, and
    each snapshot's four files."""
    names = [".lock", *more]
    for t in stamps:
        names += [f"etcd-{t}.db", f"etcd-{t}.db.sha256", f"etcd-{t}.json", f"etcd-{t}.encryption-config.yaml"]
    return sorted(names)


def certificate(cn: str, days: int, ca: bool = False) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=days, hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CA_PEM = certificate("KUBERNETES-CA", 3650, ca=True)
LEAF_PEM = certificate("system:node:worker-1", 364)
# kthw/hostcerts.py READ_COMMAND's output: a CA bundle and a leaf, with their mtimes
CERTS_TEXT = (f"==> file /var/lib/kubernetes/pki/ca.crt 1764992000\n{CA_PEM}"
              f"==> file /var/lib/kubelet/pki/kubelet.crt 1764992000\n{LEAF_PEM}")


@pytest.fixture
def cluster(tmp_path, raw_cluster):
    return make_cluster(raw_cluster, tmp_path)


def status(node: str, leader: str = "master-1", **changes) -> list:
    out = copy.deepcopy(ETCD_STATUS)
    out[0]["Status"]["header"]["member_id"] = MEMBER_IDS[node]
    out[0]["Status"]["leader"] = MEMBER_IDS[leader] if leader else 0
    out[0]["Status"].update(changes)
    return out


def cluster_list(cluster) -> dict:
    items = []
    for n in cluster.kubelet_nodes:
        node = copy.deepcopy(NODE)
        node["metadata"]["name"] = n.name
        items.append(node)
    for name in health.LEASES:
        lease = copy.deepcopy(LEASE)
        lease["metadata"]["name"] = name
        items.append(lease)
    items += [copy.deepcopy(APISERVER_LEASE), copy.deepcopy(ENDPOINT_SLICE)]
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


def healthy(cluster) -> Answers:
    """What every node of a well cluster answers (the probe's JSON, parsed)."""
    answers = Answers()
    for n in cluster.nodes:
        a: dict = {"time": NOW.timestamp(), "services": copy.deepcopy(SERVICES[n.role])}
        if n.holds_certificates:
            a["certs"] = CERTS_TEXT
        if n.runs_etcd:
            a["etcd_status"], a["etcd_alarms"] = status(n.name), copy.deepcopy(ALARMS_NONE)
        if n.is_master:
            a["cluster"] = cluster_list(cluster)
            a["snapshots"] = listing(STAMPS.get(n.name, []))
        if n.runs_kubelet:
            a["readyz"] = {url: dict(READY) for url in health.local_readyz(n)}
            a["dns"] = {"rcode": 0, "answers": [str(cluster.api_service_ip)]}
            if cluster.cni == "weave":
                conns = []
                for p in cluster.kubelet_nodes:
                    if p != n:
                        c = copy.deepcopy(WEAVE_CONNECTION)
                        c["Address"] = f"{p.ip}:6783"
                        conns.append(c)
                a["weave"] = {"Name": "9a:1f:22:4c:8e:01", "NickName": n.name, "Connections": conns}
            else:
                a["routes"] = [[str(p.pod_cidr), str(p.ip)] for p in cluster.kubelet_nodes if p != n]
        answers.nodes[n.name] = a
    answers.entrance = {url: dict(READY) for url in health.entrance_urls(cluster).values()}
    return answers


def judge(cluster, answers, within=30, max_age=None) -> list[Row]:
    return health.evaluate(cluster, answers, NOW, within, max_age)


def failing(rows) -> set[tuple[str, str]]:
    return {(r.check, r.subject) for r in rows if r.status == FAIL}


def row(rows, check, subject) -> Row:
    return next(r for r in rows if (r.check, r.subject) == (check, subject))


# --------------------------------------------------------------------------- a well cluster


def test_a_well_cluster_is_all_ok_and_exits_0(cluster):
    rows = judge(cluster, healthy(cluster))
    assert [r for r in rows if r.status != OK] == []
    assert [r.check for r in rows] == sorted((r.check for r in rows), key=health.CHECKS.index)
    assert set(r.check for r in rows) == set(health.CHECKS)
    assert row(rows, "ssh", "every node").detail == "5 of 5 nodes answered"
    assert row(rows, "nodes", "worker-1").detail == "Ready, kubelet v1.36.3"
    assert row(rows, "etcd", "cluster").detail == "leader master-1, 2 of 2 members healthy, no alarm"
    assert row(rows, "etcd", "master-1").detail == "leader, db 7.0 MiB (3.4 MiB in use) of 2.00 GiB, etcd 3.6.16"
    assert row(rows, "etcd", "master-2").detail.startswith("follower, ")
    assert row(rows, "leases", "kube-scheduler").detail == "held by master-1, renewed 1 s ago (lease 15 s)"
    assert row(rows, "dns", "kube-dns endpoints").detail == "2 of 2 endpoints ready"
    assert row(rows, "dns", "query 10.96.0.10").detail == (
        "kubernetes.default.svc.cluster.local = 10.96.0.1 on every node (4)")
    assert row(rows, "pod network", "master-1").detail == "Weave Net connected to every peer (3)"
    assert row(rows, "apiserver", "entrance 192.168.56.30:6443").detail == "ready"
    assert row(rows, "services", "loadbalancer").detail == "haproxy active"  # keepalived disabled: not judged
    assert "(soonest CN=system:node:worker-1 in 364 days)" in row(rows, "certificates", "worker-1").detail
    assert {r.subject for r in rows if r.check == "certificates"} == {"master-1", "master-2", "worker-1", "worker-2"}
    assert row(rows, "snapshot", "etcd").detail == "newest 55 min old: master-2:etcd-20261206T090412Z.db"
    assert [r.subject for r in rows if r.check == "snapshot"] == ["etcd"]  # no master behind its schedule
    assert len(rows) == 33  # as docs/day-two.md's example table counts them
    text, code = health.report(rows)
    assert code == 0 and text.splitlines()[-1] == f"{len(rows)} rows: {len(rows)} OK"
    assert text.splitlines()[0].split() == ["CHECK", "SUBJECT", "STATUS", "DETAIL"]


def test_the_table_names_each_failure_and_exits_1():
    rows = [Row("nodes", "worker-1", OK, "Ready"), Row("etcd", "master-2", FAIL, "the member does not answer"),
            Row("snapshot", "etcd", WARN, "no etcd snapshot yet")]
    text, code = health.report(rows)
    assert code == 1
    assert "\netcd      master-2  FAIL    the member does not answer\n" in text
    assert text.splitlines()[-1] == "3 rows: 1 OK, 1 WARN, 1 FAIL"
    assert health.report(rows[::2])[1] == 0  # a WARN alone does not fail


# --------------------------------------------------------------------------- one fault each


def test_a_stopped_kubelet_fails_its_service_then_its_node(cluster):
    answers = healthy(cluster)
    answers.nodes["worker-1"]["services"]["kubelet"] = ["inactive", "dead", "enabled"]
    assert failing(judge(cluster, answers)) == {("services", "worker-1")}  # before the node controller notices
    for m in cluster.masters:
        node = next(i for i in answers.nodes[m.name]["cluster"]["items"] if i["metadata"]["name"] == "worker-1")
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        ready.update(status="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status.")
    rows = judge(cluster, answers)
    assert failing(rows) == {("services", "worker-1"), ("nodes", "worker-1")}
    assert row(rows, "services", "worker-1").detail == "enabled but not running: kubelet inactive (dead)"
    assert row(rows, "nodes", "worker-1").detail == (
        "Ready=Unknown: NodeStatusUnknown: Kubelet stopped posting node status.")


def test_a_node_missing_cordoned_or_unknown_to_the_file(cluster):
    answers = healthy(cluster)
    for m in cluster.masters:
        items = answers.nodes[m.name]["cluster"]["items"]
        items.remove(next(i for i in items if i["metadata"]["name"] == "worker-2"))
        next(i for i in items if i["metadata"]["name"] == "worker-1")["spec"]["unschedulable"] = True
        extra = copy.deepcopy(NODE)
        extra["metadata"]["name"] = "worker-9"
        items.append(extra)
    rows = judge(cluster, answers)
    assert failing(rows) == {("nodes", "worker-2")}
    assert row(rows, "nodes", "worker-2").detail.startswith("no Node object")
    assert row(rows, "nodes", "worker-1").status == WARN and "cordoned" in row(rows, "nodes", "worker-1").detail
    assert row(rows, "nodes", "worker-9") == Row("nodes", "worker-9", WARN, "a Node the cluster file does not list")


def test_a_stopped_etcd_member_of_three_fails_that_member_only(tmp_path):
    three = make_cluster(scaled(3, 2), tmp_path)
    answers = healthy(three)
    answers.nodes["master-3"]["services"]["etcd"] = ["failed", "failed", "enabled"]
    answers.nodes["master-3"]["etcd_status"] = {
        "error": "Failed to get the status of endpoint https://127.0.0.1:2379 (context deadline exceeded)"}
    answers.nodes["master-3"]["etcd_alarms"] = {"error": "context deadline exceeded"}
    rows = judge(three, answers)
    assert failing(rows) == {("services", "master-3"), ("etcd", "master-3")}
    assert "context deadline exceeded" in row(rows, "etcd", "master-3").detail
    assert row(rows, "etcd", "cluster").detail == "leader master-1, 2 of 3 members healthy, no alarm"


def test_etcd_without_quorum_or_leader(cluster):
    answers = healthy(cluster)
    answers.nodes["master-2"]["etcd_status"] = {"error": "connection refused"}
    answers.nodes["master-1"]["etcd_status"] = status("master-1", leader="")
    rows = judge(cluster, answers)
    assert failing(rows) == {("etcd", "master-2"), ("etcd", "cluster")}
    assert row(rows, "etcd", "cluster").detail == "no quorum: 1 of 2 members healthy, 2 needed; no leader"
    # a member that does not answer at all counts against the quorum too
    answers = healthy(cluster)
    del answers.nodes["master-2"]
    answers.unreachable["master-2"] = "no answer: master-2: ssh: connect to host 192.168.56.12 port 22: timed out"
    rows = judge(cluster, answers)
    assert failing(rows) == {("ssh", "master-2"), ("etcd", "cluster")}
    # its own rows are left out (the ssh row names it); the cluster's view of it stays
    assert [r.check for r in rows if r.subject == "master-2"] == ["ssh", "nodes"]


def test_etcd_alarms_errors_disagreement_and_a_full_database(cluster):
    answers = healthy(cluster)
    answers.nodes["master-1"]["etcd_alarms"] = copy.deepcopy(ALARMS_NOSPACE)
    answers.nodes["master-2"]["etcd_alarms"] = copy.deepcopy(ALARMS_NOSPACE)  # (the same alarm, seen twice)
    answers.nodes["master-2"]["etcd_status"] = status("master-2", dbSize=1900 * 1024**2)
    rows = judge(cluster, answers)
    assert failing(rows) == {("etcd", "cluster")}
    assert row(rows, "etcd", "cluster").detail == "alarm NOSPACE on master-2"
    full = row(rows, "etcd", "master-2")
    assert full.status == WARN and "above 80% of its quota" in full.detail
    answers = healthy(cluster)
    answers.nodes["master-2"]["etcd_status"] = status("master-2", leader="master-2")
    answers.nodes["master-1"]["etcd_status"] = status("master-1", errors=["etcdserver: no leader"])
    rows = judge(cluster, answers)
    assert failing(rows) == {("etcd", "master-1"), ("etcd", "cluster")}
    assert row(rows, "etcd", "master-1").detail.startswith("errors: etcdserver: no leader (")
    answers.nodes["master-1"]["etcd_status"] = status("master-1")
    assert row(judge(cluster, answers), "etcd", "cluster").detail == (
        "the members name different leaders: master-1 names master-1, master-2 names master-2")


def test_a_snapshot_timer_enabled_but_stopped_fails_its_masters_services(cluster):
    answers = healthy(cluster)
    assert "kthw-etcd-snapshot.timer active" in row(judge(cluster, answers), "services", "master-2").detail
    answers.nodes["master-2"]["services"]["kthw-etcd-snapshot.timer"] = ["inactive", "dead", "enabled"]
    rows = judge(cluster, answers)
    assert failing(rows) == {("services", "master-2")}
    assert row(rows, "services", "master-2").detail == (
        "enabled but not running: kthw-etcd-snapshot.timer inactive (dead)")


def test_a_stopped_apiserver_fails_on_its_master_and_the_others_read_the_cluster(cluster):
    answers = healthy(cluster)
    m1 = answers.nodes["master-1"]
    m1["services"]["kube-apiserver"] = ["inactive", "dead", "enabled"]
    m1["services"]["kube-scheduler"] = ["activating", "auto-restart", "enabled"]
    m1["readyz"]["https://127.0.0.1:6443/readyz"] = {"error": "[Errno 111] Connection refused"}
    m1["cluster"] = {"error": 'The connection to the server 127.0.0.1:6443 was refused - did you specify the right '
                              'host or port?'}
    m1["certs"] = CERTS_TEXT  # (its configmap read failed silently)
    rows = judge(cluster, answers)
    assert failing(rows) == {("services", "master-1"), ("apiserver", "master-1")}
    assert row(rows, "services", "master-1").detail == (
        "enabled but not running: kube-apiserver inactive (dead), kube-scheduler activating (auto-restart)")
    assert row(rows, "apiserver", "master-1").detail == "does not answer: [Errno 111] Connection refused"


def test_an_apiserver_that_is_not_ready_names_its_failing_checks(cluster):
    answers = healthy(cluster)
    answers.nodes["master-2"]["readyz"]["https://127.0.0.1:6443/readyz"] = {"status": 500, "body": (
        "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]poststarthook/start-kube-aggregator-informers ok\n"
        "[-]etcd-readiness failed: reason withheld\nreadyz check failed")}
    rows = judge(cluster, answers)
    assert failing(rows) == {("apiserver", "master-2")}
    assert row(rows, "apiserver", "master-2").detail == "/readyz 500: failing etcd, etcd-readiness"


def test_the_entrance_and_the_node_proxies_are_asked_too(cluster, raw_cluster, tmp_path):
    answers = healthy(cluster)
    answers.entrance["https://192.168.56.30:6443/readyz"] = {"error": "timed out"}
    answers.nodes["worker-2"]["readyz"][health.NODE_PROXY_READYZ] = {"error": "[Errno 104] Connection reset by peer"}
    rows = judge(cluster, answers)
    assert failing(rows) == {("apiserver", "entrance 192.168.56.30:6443"), ("api proxy", "worker-2")}
    # two load balancers: the virtual IP, and each one's own address
    raw_cluster["nodes"].insert(1, {"name": "loadbalancer-2", "role": "loadbalancer", "ip": "192.168.56.31"})
    raw_cluster["network"]["api_vip"] = "192.168.56.40"
    pair = make_cluster(raw_cluster, tmp_path / "pair")
    assert health.entrance_urls(pair) == {
        "entrance 192.168.56.40:6443": "https://192.168.56.40:6443/readyz",
        "loadbalancer 192.168.56.30:6443": "https://192.168.56.30:6443/readyz",
        "loadbalancer-2 192.168.56.31:6443": "https://192.168.56.31:6443/readyz"}


def test_leases_must_be_held_and_renewed(cluster):
    answers = healthy(cluster)
    for m in cluster.masters:
        items = answers.nodes[m.name]["cluster"]["items"]
        scheduler = next(i for i in items if i["metadata"]["name"] == "kube-scheduler")
        scheduler["spec"]["renewTime"] = "2026-12-06T09:59:13.000001Z"
        items.remove(next(i for i in items if i["metadata"]["name"] == "kube-controller-manager"))
    rows = judge(cluster, answers)
    assert failing(rows) == {("leases", "kube-scheduler"), ("leases", "kube-controller-manager")}
    assert row(rows, "leases", "kube-scheduler").detail == (
        "held by master-1 but not renewed for 47 s (lease 15 s): no kube-scheduler leads")
    assert "no Lease kube-system/kube-controller-manager" in row(rows, "leases", "kube-controller-manager").detail
    # judged by the answering master's clock, not this machine's
    answers = healthy(cluster)
    for m in cluster.masters:
        answers.nodes[m.name]["time"] = NOW.timestamp() + 60
    assert failing(judge(cluster, answers)) == {("leases", "kube-scheduler"), ("leases", "kube-controller-manager")}


def test_coredns_scaled_to_zero_fails_the_dns_check_only(cluster):
    answers = healthy(cluster)
    for m in cluster.masters:
        es = next(i for i in answers.nodes[m.name]["cluster"]["items"] if i["kind"] == "EndpointSlice")
        es["endpoints"] = None  # what the controller writes when no pod is selected
    for n in cluster.kubelet_nodes:
        answers.nodes[n.name]["dns"] = {"error": "timed out"}
    rows = judge(cluster, answers)
    assert failing(rows) == {("dns", "kube-dns endpoints"), ("dns", "query 10.96.0.10")}
    assert "CoreDNS is not running" in row(rows, "dns", "kube-dns endpoints").detail
    assert row(rows, "dns", "query 10.96.0.10").detail.startswith(
        "kubernetes.default.svc.cluster.local: no answer on any node: master-1 (timed out); ")


def test_dns_failing_on_some_nodes_only_warns(cluster):
    answers = healthy(cluster)
    es = next(i for i in answers.nodes["master-1"]["cluster"]["items"] if i["kind"] == "EndpointSlice")
    es["endpoints"][1]["conditions"]["ready"] = False
    answers.nodes["worker-2"]["dns"] = {"error": "timed out"}
    answers.nodes["worker-1"]["dns"] = {"rcode": 3, "answers": []}
    rows = judge(cluster, answers)
    assert failing(rows) == set()
    assert row(rows, "dns", "kube-dns endpoints") == Row("dns", "kube-dns endpoints", WARN, "1 of 2 endpoints ready")
    detail = row(rows, "dns", "query 10.96.0.10").detail
    assert row(rows, "dns", "query 10.96.0.10").status == WARN
    assert "on master-1, master-2; not on worker-1 (rcode 3, NXDOMAIN); worker-2 (timed out)" in detail


def test_a_cut_weave_connection_fails_both_ends(cluster):
    answers = healthy(cluster)
    for me, peer in (("worker-1", "192.168.56.22"), ("worker-2", "192.168.56.21")):
        conns = answers.nodes[me]["weave"]["Connections"]
        conns.remove(next(c for c in conns if c["Address"].startswith(peer)))
        failed = copy.deepcopy(WEAVE_FAILED)
        failed["Address"] = f"{peer}:6783"
        conns.append(failed)
    # an inbound connection (the peer's port is its own) still counts
    conns = answers.nodes["master-1"]["weave"]["Connections"]
    inbound = next(c for c in conns if c["Address"].startswith("192.168.56.21"))
    inbound.update(Address="192.168.56.21:41894", Outbound=False)
    rows = judge(cluster, answers)
    assert failing(rows) == {("pod network", "worker-1"), ("pod network", "worker-2")}
    assert row(rows, "pod network", "worker-1").detail == (
        "Weave Net not connected to worker-2 (failed: dial tcp4 :0->192.168.56.22:6783: i/o timeout, retry: "
        "2026-12-06 10:01:12)")
    answers.nodes["master-2"]["weave"] = {"error": "[Errno 111] Connection refused"}
    assert "router does not answer" in row(judge(cluster, answers), "pod network", "master-2").detail


def test_bridge_routes_to_every_other_nodes_pods(tmp_path, raw_cluster):
    raw_cluster["cni"] = "bridge"
    bridge = make_cluster(raw_cluster, tmp_path)
    answers = healthy(bridge)
    assert failing(judge(bridge, answers)) == set()
    w2 = bridge.node("worker-2")
    routes = answers.nodes["worker-1"]["routes"]
    routes.remove([str(w2.pod_cidr), str(w2.ip)])
    rows = judge(bridge, answers)
    assert failing(rows) == {("pod network", "worker-1")}
    assert row(rows, "pod network", "worker-1").detail == f"no route to worker-2's pods {w2.pod_cidr} via {w2.ip}"
    routes.append([str(w2.pod_cidr), "192.168.56.99"])
    assert row(judge(bridge, answers), "pod network", "worker-1").detail.endswith("(goes via 192.168.56.99)")
    spec = health.probe_spec(bridge, w2)
    assert spec["routes"] is True and "weave" not in spec


def test_certificates_inside_the_window_fail(cluster):
    answers = healthy(cluster)
    assert failing(judge(cluster, answers, within=364)) == set()
    rows = judge(cluster, answers, within=365)
    assert failing(rows) == {("certificates", n) for n in ("master-1", "master-2", "worker-1", "worker-2")}
    assert row(rows, "certificates", "worker-1").detail == (
        "1 of 2 expire within 365 days: /var/lib/kubelet/pki/kubelet.crt (CN=system:node:worker-1, 364 days) "
        "(rerun the deploy)")
    assert "rotate the CAs" in row(judge(cluster, answers, within=4000), "certificates", "worker-1").detail
    answers.nodes["worker-2"]["certs"] = ""
    assert row(judge(cluster, answers), "certificates", "worker-2").detail == "no certificate found"


def test_a_node_that_does_not_answer_is_one_row_not_a_crash(cluster):
    answers = healthy(cluster)
    for name in ("worker-2", "loadbalancer"):
        del answers.nodes[name]
    answers.unreachable = {"worker-2": "not running (the inventory has no connection for it)",
                           "loadbalancer": "no answer: loadbalancer: Connection timed out during banner exchange"}
    rows = judge(cluster, answers)
    assert failing(rows) == {("ssh", "worker-2"), ("ssh", "loadbalancer")}
    assert [r.subject for r in rows if r.check == "ssh"] == ["loadbalancer", "worker-2"]  # the file's order
    # the DNS question went out from the nodes that answered
    assert row(rows, "dns", "query 10.96.0.10").detail.endswith("on every node (3)")


def test_no_master_can_read_the_cluster(cluster):
    answers = healthy(cluster)
    answers.nodes["master-1"]["cluster"] = {"error": "Unable to connect to the server: net/http: TLS handshake timeout"}
    del answers.nodes["master-2"]
    answers.unreachable["master-2"] = "no answer"
    rows = judge(cluster, answers)
    assert failing(rows) == {("ssh", "master-2"), ("nodes", "every node"), ("leases", "kube-scheduler"),
                             ("leases", "kube-controller-manager"), ("dns", "kube-dns endpoints"), ("etcd", "cluster")}
    assert row(rows, "nodes", "every node").detail == (
        "unknown: no master's kubectl answered (master-1: Unable to connect to the server: net/http: TLS handshake "
        "timeout; master-2: no answer)")


def test_an_answer_of_another_shape_is_a_failed_row_of_its_check(cluster):
    answers = healthy(cluster)
    answers.nodes["master-2"]["etcd_status"] = [{"Endpoint": "https://127.0.0.1:2379"}]  # no Status
    rows = judge(cluster, answers)
    assert failing(rows) == {("etcd", "?")}
    assert row(rows, "etcd", "?").detail == "an answer it could not read (KeyError: 'Status')"
    assert row(rows, "nodes", "worker-1").status == OK  # the other checks are judged as usual


# --------------------------------------------------------------------------- the newest snapshot


def without_snapshots(answers: Answers) -> Answers:
    """The masters' folders empty (a cluster deployed with the schedule off, or just deployed)."""
    for a in answers.nodes.values():
        if "snapshots" in a:
            a["snapshots"] = [".lock"]
    return answers


def scheduled(raw_cluster, tmp_path, **backup):
    raw_cluster["backup"] = backup
    return make_cluster(raw_cluster, tmp_path)


def test_no_snapshot_warns_unless_a_maximum_age_is_set(cluster):
    assert health.snapshot_rows(None, NOW, None)[0].status == WARN
    assert health.snapshot_rows(None, NOW, 24)[0] == Row("snapshot", "etcd", FAIL,
                                                         "no etcd snapshot: take one with backup.py")
    old = Snapshot("x.db", NOW - dt.timedelta(days=8, hours=2))
    assert health.snapshot_rows(old, NOW, None)[0] == Row("snapshot", "etcd", WARN,
                                                          "newest 8 days 2 h old: x.db, older than 7 days")
    assert health.snapshot_rows(old, NOW, 24 * 9)[0].status == OK
    day = Snapshot("y.db", NOW - dt.timedelta(hours=25, minutes=5))
    assert health.snapshot_rows(day, NOW, 24)[0] == Row("snapshot", "etcd", FAIL, "newest 25 h 5 min old: y.db, "
                                                                                  "older than --snapshot-max-age 24 h")
    answers = without_snapshots(healthy(cluster))
    assert failing(judge(cluster, answers, max_age=0)) == {("snapshot", "etcd")}


def test_the_newest_snapshot_of_the_local_backups_and_the_extra_candidates(cluster):
    assert health.newest_snapshot(cluster) is None
    folder = cluster.state_dir / "backups"
    folder.mkdir(parents=True)
    for name in ("etcd-20261205T020000Z.db", "etcd-20261206T020000Z.db", "etcd-notatime.db"):
        (folder / name).write_bytes(b"snapshot")
    newest = health.newest_snapshot(cluster)
    assert newest == Snapshot(str(folder / "etcd-20261206T020000Z.db"), dt.datetime(2026, 12, 6, 2, tzinfo=dt.UTC))
    elsewhere = Snapshot("elsewhere:etcd-20261206T090000Z.db", dt.datetime(2026, 12, 6, 9, tzinfo=dt.UTC))
    assert health.newest_snapshot(cluster, [elsewhere]) == elsewhere
    answers = without_snapshots(healthy(cluster))
    assert row(judge(cluster, answers), "snapshot", "etcd").detail == f"newest 8 h 0 min old: {newest.where}"
    answers.snapshots = [elsewhere]  # Answers.snapshots: more candidates, beside the masters' own
    assert row(judge(cluster, answers), "snapshot", "etcd").detail == f"newest 1 h 0 min old: {elsewhere.where}"
    # a backup newer than any master's
    (folder / "etcd-20261206T094500Z.db").write_bytes(b"snapshot")
    assert row(judge(cluster, healthy(cluster)), "snapshot", "etcd").detail == (
        f"newest 15 min old: {folder / 'etcd-20261206T094500Z.db'}")


def test_a_masters_snapshot_counts_with_its_sha256_beside_it(cluster):
    answers = healthy(cluster)
    # master-1: a run by hand moving its files in (the .db comes last), its work folder still there
    answers.nodes["master-1"]["snapshots"] = listing(
        STAMPS["master-1"], ".partial-20261206T095840Z", "etcd-20261206T095840Z.db.sha256",
        "etcd-20261206T095840Z.json", "etcd-20261206T095840Z.encryption-config.yaml")
    # master-2: a .db copied in by hand, and the oldest's .db pruned by a run cut short before its sidecars
    answers.nodes["master-2"]["snapshots"] = [n for n in listing(STAMPS["master-2"], "etcd-20261206T093000Z.db")
                                              if n != "etcd-20261204T150311Z.db"]
    held = health.master_snapshots(cluster, answers)
    assert [s.where for s in held["master-1"]] == [f"master-1:etcd-{t}.db" for t in STAMPS["master-1"]]
    assert [s.where for s in held["master-2"]] == [f"master-2:etcd-{t}.db" for t in STAMPS["master-2"][1:]]
    assert held["master-2"][-1].taken == dt.datetime(2026, 12, 6, 9, 4, 12, tzinfo=dt.UTC)
    assert row(judge(cluster, answers), "snapshot", "etcd").detail == (
        "newest 55 min old: master-2:etcd-20261206T090412Z.db")
    del answers.nodes["master-2"]  # master-2 does not answer: the newest of those that did
    answers.unreachable["master-2"] = "no answer"
    assert row(judge(cluster, answers), "snapshot", "etcd").detail == (
        "newest 3 h 57 min old: master-1:etcd-20261206T060231Z.db")


def test_with_the_schedule_on_the_newest_may_be_twice_backup_every_old(cluster, raw_cluster, tmp_path):
    window = health.schedule_window(cluster)  # backup.every 6h, as shipped
    assert window == (dt.timedelta(hours=12, minutes=41),
                      "12 h 41 min (twice backup.every 6h, and a margin)")
    assert health.schedule_window(scheduled(raw_cluster, tmp_path / "a", every="15min"))[0] == dt.timedelta(
        minutes=36, seconds=30)
    assert health.schedule_window(scheduled(raw_cluster, tmp_path / "b", scheduled=False)) is None
    young, old = (Snapshot("x.db", NOW - dt.timedelta(hours=12, minutes=m)) for m in (40, 42))
    assert health.snapshot_rows(young, NOW, None, window)[0].status == OK
    assert health.snapshot_rows(old, NOW, None, window)[0] == Row(
        "snapshot", "etcd", WARN, "newest 12 h 42 min old: x.db, older than 12 h 41 min (twice backup.every 6h, "
                                  "and a margin)")
    assert health.snapshot_rows(old, NOW, 24, window)[0].status == OK  # --snapshot-max-age is the limit then
    assert health.snapshot_rows(old, NOW, 12, window)[0].status == FAIL
    # both masters' runs failing since last night
    answers = healthy(cluster)
    for m in ("master-1", "master-2"):
        answers.nodes[m]["snapshots"] = listing(STAMPS[m][:6])
    rows = judge(cluster, answers)
    assert failing(rows) == set()
    assert [(r.subject, r.status) for r in rows if r.check == "snapshot"] == [
        ("etcd", WARN), ("master-1", WARN), ("master-2", WARN)]
    assert row(rows, "snapshot", "etcd").detail == (
        "newest 12 h 56 min old: master-2:etcd-20261205T210357Z.db, older than 12 h 41 min (twice backup.every 6h, "
        "and a margin)")
    assert row(rows, "snapshot", "master-1").detail == (
        "timer enabled, but no snapshot within 12 h 41 min (twice backup.every 6h, and a margin); its newest is "
        "15 h 42 min old: master-1:etcd-20261205T181702Z.db (`journalctl -u kthw-etcd-snapshot` on it says why)")
    # the same snapshots, the schedule off: a week is the limit, and no master is behind a schedule
    off = scheduled(raw_cluster, tmp_path / "c", scheduled=False)
    assert [(r.subject, r.status) for r in judge(off, answers) if r.check == "snapshot"] == [("etcd", OK)]


def test_a_master_behind_its_schedule_is_named(cluster):
    answers = healthy(cluster)
    m1 = answers.nodes["master-1"]
    m1["snapshots"] = listing(STAMPS["master-1"][:5])  # its last three runs failed
    rows = judge(cluster, answers)
    assert row(rows, "snapshot", "etcd").status == OK  # master-2's are young
    assert [(r.subject, r.status) for r in rows if r.check == "snapshot"] == [("etcd", OK), ("master-1", WARN)]
    behind = row(rows, "snapshot", "master-1").detail
    assert "; its newest is 21 h 59 min old: master-1:etcd-20261205T120005Z.db (" in behind
    m1["snapshots"] = [".lock", ".partial-20261206T060231Z"]  # not one run went through
    assert row(judge(cluster, answers), "snapshot", "master-1").detail == (
        "timer enabled, but no snapshot within 12 h 41 min (twice backup.every 6h, and a margin); none there yet "
        "(`journalctl -u kthw-etcd-snapshot` on it says why)")
    del m1["services"]["kthw-etcd-snapshot.timer"]  # no timer there (not deployed since): not judged here
    assert [r.subject for r in judge(cluster, answers) if r.check == "snapshot"] == ["etcd"]
    m1["snapshots"] = {"error": "[Errno 5] Input/output error: '/var/lib/etcd-snapshots'"}
    rows = judge(cluster, answers)
    assert row(rows, "snapshot", "master-1") == Row(
        "snapshot", "master-1", WARN,
        "/var/lib/etcd-snapshots could not be listed: [Errno 5] Input/output error: '/var/lib/etcd-snapshots'")
    assert row(rows, "snapshot", "etcd").detail == "newest 55 min old: master-2:etcd-20261206T090412Z.db"


# --------------------------------------------------------------------------- what is asked, and how


def test_each_node_is_asked_what_it_can_answer(cluster):
    lb, m1, w1 = (health.probe_spec(cluster, cluster.node(n)) for n in ("loadbalancer", "master-1", "worker-1"))
    assert set(lb) == {"services"}
    assert {"haproxy.service", "kubelet.service", "kthw-etcd-snapshot.timer"} <= set(lb["services"])  # systemd's names
    assert set(m1) == {"services", "identity", "certs", "etcd", "kubectl", "readyz", "cafile", "dns", "weave",
                       "snapshots"}
    assert m1["snapshots"] == "/var/lib/etcd-snapshots"
    assert m1["etcd"].startswith("ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/")
    assert m1["kubectl"]["kubeconfig"] == "/etc/kubernetes/admin.kubeconfig"
    assert m1["readyz"] == ["https://127.0.0.1:6443/readyz", "https://127.0.0.1:7445/readyz"]
    assert w1["readyz"] == ["https://127.0.0.1:7445/readyz"] and "etcd" not in w1 and "kubectl" not in w1
    assert w1["dns"] == {"server": "10.96.0.10", "name": "kubernetes.default.svc.cluster.local"}
    assert w1["identity"] == "/var/lib/kubernetes/pki/ca.crt"
    # the probe is one python3 command; its argument is the spec
    argv = shlex.split(health.probe_command(cluster, cluster.node("worker-1")))
    assert argv[:2] == ["python3", "-c"] and argv[2] == PROBE.read_text() and json.loads(argv[3]) == w1


def test_an_etcd_only_member_is_asked_about_etcd_and_its_own_ca(tmp_path, raw_cluster):
    next(n for n in raw_cluster["nodes"] if n["role"] == "loadbalancer")["etcd"] = True
    witness = make_cluster(raw_cluster, tmp_path)
    spec = health.probe_spec(witness, witness.node("loadbalancer"))
    assert set(spec) == {"services", "identity", "certs", "etcd"}
    assert spec["identity"] == "/etc/etcd/etcd-ca.crt"


def write_pki(cluster) -> None:
    cluster.pki_dir.mkdir(parents=True)
    (cluster.pki_dir / "ca.crt").write_text(CA_PEM)
    (cluster.pki_dir / "etcd-ca.crt").write_text(certificate("ETCD-CA", 3650, ca=True))


def fake_runner(answers: dict):
    """Stands in for ssh_run: each node's canned answer (bytes), or an SshError."""
    seen = []

    def run(name, conn, command):
        seen.append((name, command))
        if isinstance(answers[name], Exception):
            raise answers[name]
        return answers[name]
    return run, seen


def test_gathering_asks_every_node_at_once_and_names_those_that_do_not_answer(cluster):
    write_pki(cluster)
    well = healthy(cluster)
    canned = {n: json.dumps(a).encode() for n, a in well.nodes.items()}
    canned["worker-1"] = SshError("worker-1: ssh: connect to host 10.0.3.5 port 22: No route to host")
    canned["loadbalancer"] = b"Traceback (most recent call last):\n..."
    run, seen = fake_runner(canned)
    conns = {n.name: {"ssh_hostname": "10.0.3.5", "ssh_user": "vagrant"} for n in cluster.nodes if n.name != "worker-2"}
    asked = []
    answers = health.gather(cluster, conns, run, ask=lambda url, cadata: asked.append((url, cadata)) or dict(READY))
    assert sorted(n for n, _ in seen) == ["loadbalancer", "master-1", "master-2", "worker-1"]
    assert all(cmd.startswith("sudo -n python3 -c ") for _, cmd in seen)  # as root
    assert asked == [("https://192.168.56.30:6443/readyz", CA_PEM)]
    assert set(answers.nodes) == {"master-1", "master-2"}
    assert answers.unreachable == {
        "worker-2": "not running (the inventory has no connection for it)",
        "worker-1": "no answer: worker-1: ssh: connect to host 10.0.3.5 port 22: No route to host",
        "loadbalancer": "its answer is not JSON: b'Traceback (most recent call last):\\n...'"}


def test_the_whole_command_checks_the_local_pki_and_the_identity_first(cluster):
    with pytest.raises(HealthConfigError, match="holds no PKI"):
        health.health(cluster, 30, conns={})
    write_pki(cluster)
    well = healthy(cluster)
    for n in cluster.nodes:
        well.nodes[n.name]["identity"] = None  # not deployed there yet: nothing to compare
    well.nodes["master-1"]["identity"] = "0" * 64  # another cluster's CA
    run, _ = fake_runner({n: json.dumps(a).encode() for n, a in well.nodes.items()})
    conns = {n.name: {"ssh_hostname": str(n.ip)} for n in cluster.nodes}
    with pytest.raises(HealthConfigError, match="master-1 hold.s. another cluster's CA"):
        health.health(cluster, 30, conns=conns, run=run, ask=lambda u, c: dict(READY))
    well.nodes["master-1"]["identity"] = hashlib.sha256(CA_PEM.encode()).hexdigest()
    run, _ = fake_runner({n: json.dumps(a).encode() for n, a in well.nodes.items()})
    text, code = health.health(cluster, 30, conns=conns, run=run, ask=lambda u, c: dict(READY))
    assert code == 0, text  # (the leases were renewed at NOW: "now" is the answering master's clock)
    assert "FAIL" not in text and "master-2:etcd-20261206T090412Z.db" in text  # (its age by this machine's clock)


def test_the_command_line(tmp_path, monkeypatch, capsys):
    from kthw.__main__ import main, parse_args

    assert parse_args(["health", "--within", "10", "--snapshot-max-age", "26"]).snapshot_max_age == 26
    for bad in (["certs", "--snapshot-max-age", "1"], ["health", "--snapshot-max-age", "-1"],
                ["diagram", "--within", "3"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(bad)
        assert exc.value.code == 2
    monkeypatch.setenv("KTHW_STATE_DIR", str(tmp_path))  # no PKI there: exit 2, before any SSH
    assert main(["health"]) == 2
    assert "holds no PKI" in capsys.readouterr().err


# --------------------------------------------------------------------------- the probe on the node


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("health_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # (its main only runs as a script)
    return module


def dns_reply(question: bytes, addresses: list[str], rcode: int = 0) -> bytes:
    """A server's reply: the question echoed, then A records pointing back at its name."""
    qid = struct.unpack(">H", question[:2])[0]
    header = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, len(addresses), 0, 0)
    answers = b"".join(struct.pack(">HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton(a) for a in addresses)
    return header + question[12:] + answers


def test_the_probe_asks_the_cluster_dns_over_udp(probe):
    question = probe.dns_question(0x1234, "kubernetes.default.svc.cluster.local")
    assert question[12:].startswith(b"\x0akubernetes\x07default\x03svc\x07cluster\x05local\x00")
    assert probe.dns_answer(dns_reply(question, ["10.96.0.1"]), 0x1234) == {"rcode": 0, "answers": ["10.96.0.1"]}
    assert probe.dns_answer(dns_reply(question, [], rcode=3), 0x1234) == {"rcode": 3, "answers": []}
    with pytest.raises(ValueError):
        probe.dns_answer(dns_reply(question, ["10.96.0.1"]), 0x4321)  # another question's reply
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))

    def serve():
        data, peer = server.recvfrom(512)
        server.sendto(b"\x00\x00garbage", peer)  # ignored: not the reply to our question
        server.sendto(dns_reply(data, ["10.96.0.1", "10.96.0.2"]), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    arg = {"server": "127.0.0.1", "port": server.getsockname()[1], "name": "kubernetes.default.svc.cluster.local"}
    assert probe.dns(arg) == {"rcode": 0, "answers": ["10.96.0.1", "10.96.0.2"]}
    thread.join(5)
    silent = {**arg, "timeout": 0.05}  # nobody answers any more
    assert probe.dns(silent) == {"error": "timed out"}
    server.close()


def test_the_probe_reads_the_weave_routers_report(probe):
    report = {"Router": {"Protocol": "weave", "Encryption": True, "Name": "9a:1f:22:4c:8e:01", "NickName": "worker-1",
                         "Port": 6783, "Peers": [], "Connections": [WEAVE_CONNECTION, WEAVE_FAILED],
                         "Targets": ["192.168.56.11", "192.168.56.22"]},
              "IPAM": {"Range": "10.244.0.0/16"}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = json.dumps(report if self.headers.get("Accept") == "application/json" else "text").encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    got = probe.weave(f"http://127.0.0.1:{server.server_port}/report")
    thread.join(5)
    server.server_close()
    assert got == {"Name": "9a:1f:22:4c:8e:01", "NickName": "worker-1", "Connections": [WEAVE_CONNECTION, WEAVE_FAILED]}


# systemctl show -p Id,LoadState,ActiveState,SubState,UnitFileState on a master (systemd 252), for
# etcd.service, kthw-etcd-snapshot.service, kthw-etcd-snapshot.timer and keepalived.service
SYSTEMCTL_SHOW = """Id=etcd.service
LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled

Id=kthw-etcd-snapshot.service
LoadState=loaded
ActiveState=inactive
SubState=dead
UnitFileState=static

Id=kthw-etcd-snapshot.timer
LoadState=loaded
ActiveState=active
SubState=waiting
UnitFileState=enabled

Id=keepalived.service
LoadState=not-found
ActiveState=inactive
SubState=dead
UnitFileState=
"""


def test_the_probe_reads_services_and_timers_by_systemds_names(probe, tmp_path, monkeypatch):
    (tmp_path / "show").write_text(SYSTEMCTL_SHOW)
    (tmp_path / "systemctl").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\ncat {tmp_path}/show\n')
    (tmp_path / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    units = ["etcd.service", "kthw-etcd-snapshot.service", "kthw-etcd-snapshot.timer", "keepalived.service"]
    assert probe.services(units) == {"etcd": ["active", "running", "enabled"],
                                     "kthw-etcd-snapshot": ["inactive", "dead", "static"],
                                     "kthw-etcd-snapshot.timer": ["active", "waiting", "enabled"]}
    assert (tmp_path / "args").read_text().split()[-5:] == ["--", *units]  # asked as named, nothing appended


def test_the_probe_lists_the_snapshot_folders_names_only(probe, tmp_path):
    folder = tmp_path / "etcd-snapshots"
    folder.mkdir()
    for name in listing(STAMPS["master-1"][-1:], ".partial-20261206T120007Z"):
        (folder / name).write_text("")
    assert probe.main({"snapshots": str(folder)})["snapshots"] == listing(STAMPS["master-1"][-1:],
                                                                          ".partial-20261206T120007Z")
    assert probe.folder_names(str(tmp_path / "none")) == []  # no folder: no snapshot (the schedule never on)
    (tmp_path / "file").write_text("")
    assert probe.folder_names(str(tmp_path / "file"))["error"].startswith("[Errno 20] Not a directory")


def test_each_part_of_the_probe_fails_on_its_own(probe, tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]  # bound, never listening: refused
    spec = {"identity": str(tmp_path / "none.crt"), "etcd": "echo 'context deadline exceeded' >&2; exit 1",
            "kubectl": {"binary": str(tmp_path / "kubectl"), "kubeconfig": "x", "resources": "nodes"},
            "readyz": [f"https://127.0.0.1:{port}/readyz"], "cafile": str(tmp_path / "none.crt"),
            "weave": f"http://127.0.0.1:{port}/report", "certs": "echo nope >&2; exit 3"}
    out = probe.main(spec)
    closed.close()
    assert out["identity"] is None
    assert out["etcd_status"] == {"error": "context deadline exceeded"}
    assert "error" in out["cluster"] and "error" in out["weave"]
    assert "error" in out["readyz"][spec["readyz"][0]]
    assert out["certs"] == {"error": "nope"}
    assert json.loads(json.dumps(out)) == out  # what it prints is JSON
    (tmp_path / "ca.crt").write_bytes(b"pem")
    assert probe.identity(str(tmp_path / "ca.crt")) == hashlib.sha256(b"pem").hexdigest()
