"""The pod network as an operator expects it: every pod address inside the model's pod CIDR,
and for Weave Net (the reference CNI) an encrypted mesh with every peer connected (in the lab's
`sleeve` mode: the shared kernel has no Open vSwitch) and NetworkPolicy enforced by weave-npc."""

from __future__ import annotations

import ipaddress
import json
import re
import time

import pytest

from tests.lab.lab import Lab
from tests.lab.test_cluster import kubelet_nodes, smoke_image


def weave_only(lab: Lab) -> None:
    if lab.cluster.cni != "weave":
        pytest.skip(f"cni: {lab.cluster.cni} has no mesh and no NetworkPolicy enforcement (docs/deploy.md)")


def test_every_pod_address_is_inside_the_pod_cidr(lab):
    pods = json.loads(lab.kubectl("get", "pods", "-A", "-o", "json"))["items"]
    addresses = [p["status"].get("podIP") for p in pods if not p["spec"].get("hostNetwork")]
    assert addresses and all(addresses)
    network = ipaddress.ip_network(lab.cluster.pod_network)
    assert [a for a in addresses if ipaddress.ip_address(a) not in network] == []


def weave_pods(lab: Lab) -> dict[str, dict]:
    pods = json.loads(lab.kubectl("-n", "kube-system", "get", "pods", "-l", "name=weave-net", "-o", "json"))
    return {p["spec"]["nodeName"]: p for p in pods["items"]}


def assert_mesh_complete(lab: Lab) -> None:
    n = len(kubelet_nodes(lab))  # a Weave peer on every node, masters included
    for worker in kubelet_nodes(lab):
        status = lab.ssh(worker, "curl -s http://127.0.0.1:6784/status")
        assert "Encryption: enabled" in status, status
        assert f"Peers: {n} " in status or f"Peers: {n}\n" in status, status
        if n > 1:
            # an established connection to every other peer, and every peer to every other (Weave
            # may also keep retrying a second address it learnt for a peer it already reaches: on
            # 16 nodes one node showed "Connections: 15 (14 established, 1 retrying)")
            assert re.search(rf"Connections: \d+ \({n - 1} established", status), status
            assert f"Peers: {n} (with {n * (n - 1)} established connections)" in status, status
        connections = lab.ssh(worker, "curl -s http://127.0.0.1:6784/status/connections")
        # no Open vSwitch datapath in the lab's kernel: Weave's pcap-based sleeve mode, encrypted
        assert connections.count("sleeve") == n - 1 and "encrypted" in connections, connections


def test_weave_mesh_is_encrypted_and_every_peer_connected(lab):
    weave_only(lab)
    assert set(weave_pods(lab)) == set(kubelet_nodes(lab))
    assert_mesh_complete(lab)


def test_a_restarted_weave_pod_rejoins_the_mesh(lab):
    """A node's Weave pod replaced (DaemonSet update, node reboot) comes back over the bridge its
    first start made, and the mesh is whole again."""
    weave_only(lab)
    node = kubelet_nodes(lab)[-1]
    old = weave_pods(lab)[node]["metadata"]["name"]
    lab.kubectl("-n", "kube-system", "delete", "pod", old, "--wait=true", timeout=120)

    def back():
        pod = weave_pods(lab).get(node)
        if not pod or pod["metadata"]["name"] == old:
            return None
        ready = all(c.get("ready") for c in pod["status"].get("containerStatuses", []))
        return pod if ready and pod["status"].get("containerStatuses") else None
    pod = lab.wait(f"a new Weave pod Ready on {node}", back, timeout=180)
    # The router started once, over the bridge the first pod made. (weave-npc may restart once at
    # start-up: it lists ipsets while the router's own start-up probe set weave-test-comment*
    # comes and goes, and dies flushing it: "The set with the given name does not exist".)
    router = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "weave")
    assert router["restartCount"] == 0, router
    lab.wait("the mesh whole again", lambda: assert_mesh_complete(lab) or True, timeout=120)


POLICY_TEST = """
apiVersion: v1
kind: Namespace
metadata: {{name: np-test}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: np-test, labels: {{app: server}}}}
spec:
  containers:
    - {{name: web, image: {image}, imagePullPolicy: IfNotPresent,
       command: [sh, -c, 'mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www']}}
---
apiVersion: v1
kind: Pod
metadata: {{name: allowed, namespace: np-test, labels: {{role: allowed}}}}
spec:
  containers: [{{name: c, image: {image}, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: other, namespace: np-test, labels: {{role: other}}}}
spec:
  containers: [{{name: c, image: {image}, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}]
"""
DENY_ALL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: np-test}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""
ALLOW_ONE = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-allowed, namespace: np-test}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {role: allowed}}}], ports: [{port: 8080}]}]
"""


def reaches(lab: Lab, client: str, ip: str) -> bool:
    # busybox wget without -T (it crashes); `timeout` bounds it.
    out = lab.kubectl("exec", "-n", "np-test", client, "--", "timeout", "5", "wget", "-qO-", f"http://{ip}:8080/",
                      check=False)
    return out.strip().startswith("ok")


def apply(lab: Lab, name: str, text: str) -> None:
    path = lab.cluster_file.with_suffix(f".{name}.yaml")
    path.write_text(text)
    lab.kubectl("apply", "-f", str(path))


def settle(lab: Lab, want: dict[str, bool], ip: str, timeout: float = 60) -> dict[str, bool]:
    """Poll until each client's reachability is as wanted (weave-npc applies policies within
    seconds); returns what was seen last."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {c: reaches(lab, c, ip) for c in want}
        if seen == want or time.monotonic() > deadline:
            return seen
        time.sleep(2)


def test_network_policy_is_enforced(lab):
    weave_only(lab)
    apply(lab, "np-pods", POLICY_TEST.format(image=smoke_image(lab)))
    try:
        lab.kubectl("wait", "-n", "np-test", "--for=condition=Ready", "pod", "--all", "--timeout=180s", timeout=200)
        ip = json.loads(lab.kubectl("get", "pod", "-n", "np-test", "server", "-o", "json"))["status"]["podIP"]
        assert settle(lab, {"allowed": True, "other": True}, ip) == {"allowed": True, "other": True}
        apply(lab, "np-deny", DENY_ALL)
        assert settle(lab, {"allowed": False, "other": False}, ip) == {"allowed": False, "other": False}
        apply(lab, "np-allow", ALLOW_ONE)
        assert settle(lab, {"allowed": True, "other": False}, ip) == {"allowed": True, "other": False}
    finally:
        lab.kubectl("delete", "namespace", "np-test", "--wait=false", check=False)


REUSE_POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers: [{{name: c, image: {image}, imagePullPolicy: IfNotPresent, command: [sh, -c, {serve!r}]}}]
"""
# One TCP connect from the node with the kubelet's default probe timeout (1 s).
CONNECT = """python3 -c '
import socket, sys
try:
    socket.create_connection((sys.argv[1], 8080), timeout=1).close(); print("ok")
except OSError as e:
    print("failed:", e)' """


def reuse_pod(lab: Lab, name: str, node: str) -> tuple[str, str]:
    """(address, MAC) of a new serving pod on ``node``."""
    from tests.lab.test_cluster import SERVE

    apply(lab, name, REUSE_POD.format(name=name, node=node, image=smoke_image(lab), serve=SERVE))
    lab.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=120s", timeout=150)
    ip = lab.kubectl("get", "pod", name, "-o", "jsonpath={.status.podIP}")
    return ip, lab.kubectl("exec", name, "--", "cat", "/sys/class/net/eth0/address").strip()


def test_a_reused_pod_address_is_reached_at_once(lab):
    """Weave Net gives a new pod the lowest free address, often a pod's deleted a moment ago;
    the node must not keep talking to the old pod's MAC (the kubelet's first probe of the new
    pod would be lost). kthw-neigh-flush, last in the CNI chain, clears the node's entry."""
    weave_only(lab)
    node = lab.cluster.workers[0].name
    chain = json.loads(lab.ssh(node, "cat /etc/cni/net.d/10-weave.conflist"))
    assert chain["plugins"][-1]["type"] == "kthw-neigh-flush"
    try:
        reused = 0
        for _ in range(3):
            old_ip, old_mac = reuse_pod(lab, "reuse-old", node)
            assert lab.script(node, CONNECT + old_ip).strip() == "ok"  # the node now has an entry
            lab.kubectl("delete", "pod", "reuse-old", "--wait=true", timeout=120)
            # The Pod object goes first; its address is free once the node stopped its sandbox.
            lab.wait("the deleted pod's sandbox stopped", timeout=60, interval=1, predicate=lambda: not lab.ssh(
                node, "crictl pods -q --name reuse-old --state ready").strip())
            ip, mac = reuse_pod(lab, "reuse-new", node)
            neighbour = lab.script(node, f"ip neigh show {ip}").strip()
            if ip == old_ip:
                reused += 1
                assert old_mac not in neighbour, f"{ip}: the node still has the deleted pod's MAC: {neighbour}"
            assert lab.script(node, CONNECT + ip).strip() == "ok"
            lab.kubectl("delete", "pod", "reuse-new", "--wait=true", timeout=120)
            lab.wait("the new pod's sandbox stopped", timeout=60, interval=1, predicate=lambda: not lab.ssh(
                node, "crictl pods -q --name reuse-new --state ready").strip())
        assert reused, "Weave Net never gave the deleted pod's address to the next pod on its node"
    finally:
        lab.kubectl("delete", "pod", "reuse-old", "reuse-new", "--ignore-not-found", "--wait=false")


def test_every_node_reaches_every_other_over_the_pod_network(lab):
    """A pod on every Kubernetes node (masters too) pings the pod on each other node: every pair
    of nodes is carried by the pod network, whatever the cluster's size (the large topology has
    15 nodes: 210 pairs)."""
    nodes = set(kubelet_nodes(lab))
    manifest = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "kthw-pairs", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "kthw-pairs"}}, "template": {
            "metadata": {"labels": {"app": "kthw-pairs"}},
            "spec": {"tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                     "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": smoke_image(lab), "imagePullPolicy": "IfNotPresent",
                                     "command": ["sleep", "86400"]}]}}}}
    path = lab.cluster_file.with_suffix(".pairs.json")
    path.write_text(json.dumps(manifest))
    lab.kubectl("apply", "-f", str(path))
    try:
        def placed() -> dict[str, tuple[str, str]] | None:
            items = json.loads(lab.kubectl("get", "pods", "-l", "app=kthw-pairs", "-o", "json"))["items"]
            running = {p["spec"]["nodeName"]: (p["metadata"]["name"], p["status"]["podIP"]) for p in items
                       if p["status"].get("phase") == "Running" and p["status"].get("podIP")}
            return running if set(running) == nodes else None
        pods = lab.wait("a running kthw-pairs pod on every node", placed, timeout=300)
        unreached = []
        for node, (pod, _) in sorted(pods.items()):
            others = " ".join(ip for other, (_, ip) in sorted(pods.items()) if other != node)
            out = lab.kubectl("exec", pod, "--", "sh", "-c",
                              f"for ip in {others}; do ping -c 1 -W 3 $ip >/dev/null 2>&1 || echo $ip; done",
                              timeout=60 + 4 * len(pods))
            by_ip = {ip: other for other, (_, ip) in pods.items()}
            unreached += [f"{node} -> {by_ip[ip]} ({ip})" for ip in out.split()]
        assert not unreached, f"{len(unreached)} of {len(pods) * (len(pods) - 1)} pairs failed: {unreached}"
    finally:
        lab.kubectl("delete", "daemonset", "kthw-pairs", "--ignore-not-found", "--wait=false")
