"""The inventory's cache of `vagrant ssh-config`, on real machines: used while nothing changed,
dropped by everything that changes a machine (the cluster file, a container restarted outside
Vagrant, vagrant halt/up/reload/destroy). Runs on the reference topology, whose machines it
stops and recreates (the lab tears that topology down afterwards anyway), after every other test
of that topology (this file's name sorts last)."""

from __future__ import annotations

import sys
import time

import pytest

from kthw.model import DEFAULT_CLUSTER_FILE
from tests.lab.lab import VAGRANT_ENV, Lab, sh


@pytest.fixture
def machine(lab) -> str:
    if lab.source != DEFAULT_CLUSTER_FILE:
        pytest.skip("stops and recreates machines: run once, on the reference topology")
    lab.inventory_source()  # warm
    assert lab.inventory_source() == "from cache"
    return lab.cluster.workers[-1].name


def vagrant(lab: Lab, *args: str) -> None:
    sh(["vagrant", *args], env={**lab.env, **VAGRANT_ENV}, timeout=600)


def inventory_fails(lab: Lab) -> str:
    out = sh([sys.executable, "-c", "import inventory"], env=lab.env, check=False)
    assert out.returncode == 2, out.stderr
    return out.stderr


def reachable(lab: Lab, node: str) -> None:
    """pyinfra reaches the machine through the inventory's (possibly cached) connection."""
    deadline = time.monotonic() + 120
    while True:
        out = sh([sys.executable, "-m", "pyinfra", "-y", "inventory.py", "exec", "--limit", node, "--", "true"],
                 env=lab.env, check=False)
        if out.returncode == 0:
            return
        assert time.monotonic() < deadline, out.stdout[-2000:] + out.stderr[-2000:]
        time.sleep(3)


def test_a_changed_cluster_file_drops_the_cache(lab, machine):
    text = lab.cluster_file.read_text()
    lab.cluster_file.write_text(text + "\n# touched\n")
    try:
        assert lab.inventory_source() == "vagrant ssh-config (cluster file, Vagrantfile or environment changed)"
    finally:
        lab.cluster_file.write_text(text)
    assert lab.inventory_source().startswith("vagrant ssh-config (cluster file")
    assert lab.inventory_source() == "from cache"


def test_a_container_restarted_outside_vagrant_drops_the_cache(lab, machine):
    container = f"kthw-{machine}"
    sh(["lxc-stop", "-n", container], timeout=120)
    sh(["lxc-start", "-n", container], timeout=120)
    # eth0 comes back with another DHCP address: a stale cache would point SSH at the old one
    lab.wait("the container's management address", lambda: "10." in sh(["lxc-info", "-n", container, "-iH"]).stdout,
             timeout=60, interval=1)
    assert lab.inventory_source() == f"vagrant ssh-config (machines changed: {machine})"
    assert lab.inventory_source() == "from cache"
    reachable(lab, machine)
    lab.refresh_ssh_config(machine)


def test_vagrant_halt_up_reload_destroy_each_drop_the_cache(lab, machine):
    vagrant(lab, "halt", machine)
    assert f"machines not running: {machine} (stopped)" in inventory_fails(lab)
    vagrant(lab, "up", machine)
    assert lab.inventory_source() == f"vagrant ssh-config (machines changed: {machine})"
    reachable(lab, machine)

    vagrant(lab, "reload", machine)
    assert lab.inventory_source() == f"vagrant ssh-config (machines changed: {machine})"
    assert lab.inventory_source() == "from cache"
    reachable(lab, machine)

    vagrant(lab, "destroy", "-f", machine)
    assert f"machines not running: {machine} (not_created)" in inventory_fails(lab)
    lab.up()  # recreates it
    assert lab.inventory_source().startswith("vagrant ssh-config (")
    assert lab.inventory_source() == "from cache"
    reachable(lab, machine)
