"""Failure drills: a machine lost while the cluster serves, and what each kind of client saw.

Every drill runs the same probes throughout: reads and writes through the operator's entrance
(RequestLoop, a fresh kubectl each), a pod reading and writing through the `kubernetes` Service
(InClusterClient), NodePort requests to every worker (NodePortLoop), and every node's Ready
condition, read on a master from its own apiserver (ReadyWatch). Each ends with a plan that
changes nothing.
"""

from __future__ import annotations

import json
import socket
import time

from tests.lab.lab import Lab, Probe, RequestLoop, reference_only, sh
from tests.lab.test_cluster import ADMIN
from tests.lab.workloads import InClusterClient, NodePortLoop, web_service

OUTAGE = 180  # seconds the load balancer stays away: past the node controller's grace period


class ReadyWatch(Probe):
    """Every node's Ready condition every 2 s, asked on the first master of its own apiserver
    (the operator's way in may be the thing that is down); each NotReady sighting is a failure."""

    def __init__(self, lab: Lab):
        super().__init__(2)
        self.lab = lab

    def round(self, i: int) -> None:
        self.requests += 1
        out = self.lab.ssh(self.lab.cluster.masters[0].name, f"{ADMIN} get nodes -o json", check=False)
        try:
            nodes = json.loads(out)["items"]
        except ValueError:
            self.failed(f"no node list: {out[-200:]}")
            return
        for n in nodes:
            ready = next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready")
            if ready != "True":
                self.failed(f"{n['metadata']['name']} Ready={ready}")


def listening(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_losing_the_load_balancer_cuts_off_only_the_operator(lab):
    """Every node reaches the apiservers through its own local proxy: with the load balancer
    gone for three minutes, only the operator's requests fail, and only while it is gone."""
    reference_only(lab)
    lb = lab.cluster.loadbalancer
    manifest, urls = web_service(lab, "kthw-drill-web")
    try:
        with NodePortLoop(urls) as web, InClusterClient(lab) as client, RequestLoop(lab) as api, \
                ReadyWatch(lab) as ready:
            time.sleep(5)
            stopped = time.monotonic()
            sh(["lxc-stop", "--kill", "-n", f"kthw-{lb.name}"])  # without notice, as a power cut would
            time.sleep(OUTAGE)
            sh(["lxc-start", "-n", f"kthw-{lb.name}"])
            started = time.monotonic()
            lab.wait("the load balancer to listen again", lambda: listening(str(lb.ip), 6443), timeout=120,
                     interval=0.1)
            back = time.monotonic()
            time.sleep(30)
    finally:
        lab.refresh_ssh_config(lb.name)  # its management address changed with the restart
        lab.kubectl("delete", "-f", manifest, "--wait=false", check=False)
    recovered = min(t for t in api.ok_at if t > back) - back
    print(f"\nload balancer away {back - stopped:.0f} s (booted and listening {back - started:.1f} s after "
          f"its start): {len(ready.failures)} NotReady sightings in {ready.requests} looks, "
          f"{len(client.failures)} of {client.requests} in-cluster API requests failed, "
          f"{len(web.failures)} of {web.requests} NodePort requests failed; operator: "
          f"{len(api.failures)} of {api.requests} requests failed, answered again {recovered:.1f} s after "
          "the load balancer listened")
    assert ready.failures == [] and ready.requests > OUTAGE / 3, ready.failures[:10]
    assert client.failures == [] and client.requests > OUTAGE, client.failures[:10]
    assert web.failures == [] and web.requests > OUTAGE, web.failures[:10]
    # the operator's requests fail while the load balancer is away, and only then
    assert api.failures and all(stopped <= t <= back + 5 for t in api.failed_at), api.failures[-5:]
    assert recovered <= 5
    assert not [name for name, p in lab.plan().items() if p["hosts_with_change"]]
