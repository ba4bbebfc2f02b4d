"""The inventory from recorded `vagrant ssh-config` output, and the static variant."""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple

import pytest

from kthw.inventory import InventoryError, groups, parse_ssh_config, static_connections, vagrant_connections
from kthw.model import REPO_ROOT, load_cluster, parse_cluster

Status = namedtuple("Status", "name state provider")

# Recorded from `vagrant ssh-config master-1` (lxc provider).
SSH_CONFIG = """Host master-1
  HostName 10.0.3.17
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/root/.vagrant.d/insecure_private_key"
  IdentitiesOnly yes
  LogLevel FATAL
"""


class FakeVagrant:
    def __init__(self, states):
        self.states = states
        self.ssh_config_calls = []

    def status(self):
        return [Status(n, s, "lxc") for n, s in self.states.items()]

    def ssh_config(self, vm_name=None):
        self.ssh_config_calls.append(vm_name)
        names = [vm_name] if vm_name else [n for n, s in self.states.items() if s == "running"]
        return "\n".join(SSH_CONFIG.replace("master-1", n).replace("10.0.3.17", f"10.0.3.{len(n) + i}")
                         for i, n in enumerate(names))


def test_parse_ssh_config_strips_quotes_and_casts_the_port():
    assert parse_ssh_config(SSH_CONFIG) == {"master-1": {
        "ssh_hostname": "10.0.3.17", "ssh_port": 22, "ssh_user": "vagrant",
        "ssh_key": "/root/.vagrant.d/insecure_private_key"}}


def test_parse_ssh_config_reads_every_host_block():
    text = SSH_CONFIG + "\n" + SSH_CONFIG.replace("master-1", "worker-1").replace("10.0.3.17", "10.0.3.99")
    found = parse_ssh_config(text)
    assert set(found) == {"master-1", "worker-1"} and found["worker-1"]["ssh_hostname"] == "10.0.3.99"


def test_groups_from_running_machines():
    cluster = load_cluster()
    fake = FakeVagrant({n.name: "running" for n in cluster.nodes})
    g = groups(cluster, vagrant_connections(cluster, lambda: fake))
    assert [h for h, _ in g["masters"]] == ["master-1", "master-2"]
    assert [h for h, _ in g["workers"]] == ["worker-1", "worker-2"]
    assert [h for h, _ in g["loadbalancer"]] == ["loadbalancer"]
    data = dict(g["masters"])["master-2"]
    assert data["ssh_known_hosts_file"] == "/dev/null"  # throwaway host keys never reach known_hosts
    assert data["ssh_port"] == 22 and data["_sudo"] is True
    assert data["private_ip"] == "192.168.56.12" and data["kthw_node"] == "master-2"
    assert fake.ssh_config_calls == [None]  # one call for every machine, whatever their number


def test_a_machine_that_is_not_running_fails_fast_and_names_it():
    cluster = load_cluster()
    states = {n.name: "running" for n in cluster.nodes}
    states["worker-2"] = "not_created"
    states["master-2"] = "stopped"
    fake = FakeVagrant(states)
    with pytest.raises(InventoryError) as info:
        vagrant_connections(cluster, lambda: fake)
    msg = str(info.value)
    assert "worker-2 (not_created)" in msg and "master-2 (stopped)" in msg and "vagrant up" in msg
    assert fake.ssh_config_calls == []  # nothing else was asked


def test_static_inventory(raw_cluster):
    for i, node in enumerate(raw_cluster["nodes"]):
        node["ssh"] = {"host": f"10.1.0.{i + 10}", "user": "root"}
    cluster = parse_cluster(raw_cluster)
    conns = static_connections(cluster)
    assert conns["worker-1"] == {"ssh_hostname": "10.1.0.13", "ssh_port": 22, "ssh_user": "root"}
    data = dict(groups(cluster, conns)["workers"])["worker-1"]
    assert data["_sudo"] is False
    assert "ssh_known_hosts_file" not in data  # real machines: host keys are checked


def test_static_inventory_names_nodes_without_ssh(raw_cluster):
    raw_cluster["nodes"][0]["ssh"] = {"host": "10.1.0.1"}
    with pytest.raises(InventoryError, match="master-1, master-2, worker-1, worker-2"):
        static_connections(parse_cluster(raw_cluster))


def test_bad_cluster_file_stops_before_any_host_is_touched(tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text((REPO_ROOT / "cluster.yaml").read_text().replace("cni: weave", "cni: flannel"))
    out = subprocess.run([sys.executable, "-m", "pyinfra", "inventory.py", "deploy.py", "--dry"],
                         cwd=REPO_ROOT, env={"KTHW_CLUSTER": str(bad), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "cni = 'flannel': is not one of the supported values. Fix: use one of 'weave' or 'bridge'" in out.stderr
    assert "Connecting to hosts" not in out.stdout
