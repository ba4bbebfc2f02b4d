"""A deploy killed half-way (like a dropped SSH session or Ctrl-C): the rerun makes the restarts
the killed run owed, every service then runs its new inputs, and the run after changes nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import yaml

from kthw.model import REPO_ROOT
from tests.lab.lab import Lab, reference_only
from tests.lab.test_cluster import masters

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def deploy_killed_at(lab: Lab, operation: str, cluster_file=None) -> None:
    """Run the deploy and kill it, all its processes at once, as it starts ``operation``: every
    operation before it has run on every host, none after it."""
    env = {**os.environ, "KTHW_CLUSTER": str(cluster_file or lab.cluster_file), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pyinfra", "-y", "inventory.py", "deploy.py"], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Starting" in line and operation in ANSI.sub("", line):
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-40:])


def no_changes(lab: Lab) -> None:
    out = lab.deploy("--json", label="run after the rerun")
    ops = json.loads(out.stdout)["results"]["operations"]
    assert [op["name"] for op in ops if op["success"]] == []


def started_after_placed(lab: Lab, node: str, unit: str, path: str) -> bool:
    """Did the unit's main process start after the file was placed (so it runs with it)?"""
    start = lab.ssh(node, f"systemctl show --timestamp=unix -p ExecMainStartTimestamp --value {unit}").strip()
    placed = lab.ssh(node, f"stat -c %Y {path}").strip()
    return int(start.lstrip("@")) >= int(placed)


def test_certificates_placed_by_a_killed_run_are_loaded_by_the_rerun(lab):
    # (etcd would even serve a new certificate without a restart, it reads the files at each
    # handshake; its peer and client settings still need one, and the check is the same.)
    for m in masters(lab):  # the next run re-issues them (keys kept)
        (lab.cluster.pki_dir / f"etcd-server-{m}.crt").unlink()
    deploy_killed_at(lab, "etcd | systemd unit")  # after "etcd | certificates"
    for m in masters(lab):  # placed, not restarted: the restart is owed
        assert not started_after_placed(lab, m, "etcd", "/etc/etcd/etcd-server.crt"), m
    lab.deploy(label="rerun after a killed renewal")
    for m in masters(lab):
        assert started_after_placed(lab, m, "etcd", "/etc/etcd/etcd-server.crt"), m
    no_changes(lab)


def test_a_unit_placed_by_a_killed_run_is_reloaded_and_restarted_by_the_rerun(lab, tmp_path):
    raw = yaml.safe_load(lab.cluster_file.read_text())
    raw["extra_args"] = {"kube_scheduler": {"v": 3}}
    changed = tmp_path / "scheduler-v3.yaml"
    changed.write_text(yaml.safe_dump(raw, sort_keys=False))
    running = lambda m: lab.ssh(m, "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value kube-scheduler)/cmdline")  # noqa: E731
    try:
        deploy_killed_at(lab, "control plane | kube-apiserver running", changed)  # after the unit files
        for m in masters(lab):
            assert "--v=3" in lab.ssh(m, "cat /etc/systemd/system/kube-scheduler.service")
            assert "--v=3" not in running(m)  # placed, not loaded
        out = subprocess.run([sys.executable, "-m", "pyinfra", "-y", "inventory.py", "deploy.py"], cwd=REPO_ROOT,
                             env={**os.environ, "KTHW_CLUSTER": str(changed)}, capture_output=True, text=True,
                             timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        for m in masters(lab):
            assert "--v=3" in running(m), m
            assert lab.ssh(m, "systemctl show -p NeedDaemonReload --value kube-scheduler").strip() == "no"
    finally:
        lab.deploy(label="back to the lab's model")
    for m in masters(lab):
        assert "--v=3" not in running(m), m
    no_changes(lab)


@pytest.fixture(autouse=True)
def _served_afterwards(lab):
    reference_only(lab)
    yield
    lab.served_through_load_balancer()
