"""End-to-end tests on the real lab: LXC nodes, real binaries built from source, real deploy.

They are part of `make test`. They need root, LXC and Vagrant with vagrant-lxc (scripts/setup
installs them); where they cannot run, they fail saying why, never pass silently.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from kthw.model import DEFAULT_CLUSTER_FILE
from tests.lab.lab import ROOTS, Lab, sh


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab_ready():
    """The lab's prerequisites and the artifacts it deploys (built from source, cached)."""
    problems = [f"{tool} is missing" for tool in ("vagrant", "lxc-start", "dnsmasq", "debootstrap")
                if not shutil.which(tool)]
    if os.geteuid() != 0:
        problems.append("not root (LXC containers and bridges need it)")
    assert not problems, "the lab cannot run here: " + "; ".join(problems) + ". Run scripts/setup --lab."
    sh(["lab/artifacts/build"], timeout=5400)


TOPOLOGIES = {
    "reference": DEFAULT_CLUSTER_FILE,
    "three-masters": Path(__file__).parent / "three-masters.yaml",
    "large": Path(__file__).parent / "large.yaml",  # 16 nodes; marked `large`, only when asked for
    "bridge": Path(__file__).parent / "bridge.yaml",  # the other CNI, on a small cluster
}
LARGE = ("large",)
# The offline image archives (artifacts.images), copied and imported by the deploy, on one
# topology; the others pull through the lab's registry as the shipped design pulls.
ARCHIVES = ("bridge",)


def lab_of(topology: str) -> Lab:
    return Lab(TOPOLOGIES[topology], images="archives" if topology in ARCHIVES else "registry")


@pytest.fixture(scope="session", params=[pytest.param(t, marks=pytest.mark.large) if t in LARGE else t
                                         for t in TOPOLOGIES])
def lab(request, lab_ready):
    """One topology at a time: brought up, deployed from scratch, then torn down (the next
    topology needs the machine's cores), except the last, left up for a look."""
    # From scratch: a cold deploy is part of the claim. Whichever topology is up must go first
    # (the host networks stay while any node uses them), so a second pass must succeed.
    for check in (False, True):
        for other in TOPOLOGIES:
            lab_of(other).down(check=check)
    lab = lab_of(request.param)
    lab.up()
    # The cold deploy, watched: every node's trees before and after a dry run, then after the
    # real run (tests/lab/test_dry_run.py compares them).
    lab.record["fresh"] = lab.scan(ROOTS)
    lab.record["listed"], lab.record["dry text"] = lab.dry_run_listing("dry run of fresh nodes")
    lab.record["after dry run"] = lab.scan(ROOTS)
    lab.deploy(label="cold deploy")
    start = time.monotonic()
    lab.record["restarts"] = lab.settled_pod_restarts()  # test_cluster.py: none
    lab.timings["then every kube-system pod ready"] = time.monotonic() - start
    lab.record["deployed"] = lab.scan(ROOTS)
    yield lab
    report(lab)
    if request.param != list(TOPOLOGIES)[-1]:
        lab.down()


def report(lab: Lab) -> None:
    print(f"\nlab timings for {lab.cluster.name}:")
    for label, seconds in lab.timings.items():
        print(f"  {label:28} {seconds:7.1f} s")
