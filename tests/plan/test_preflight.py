"""Every playbook gets the deploy's checks before it touches a host (kthw/preflight.py): the
run's hosts, and the cluster identity the hosts hold. Issue #19, findings 1-4; each test failed
before the shared preflight."""

from __future__ import annotations

import pytest

from kthw.model import load_cluster
from tests.plan.conftest import run_pyinfra
from tests.plan.test_day_two import a_backup


def refused(out, *words: str) -> str:
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert "Starting operation" not in text, "refused while planning, before any host"
    for w in words:
        assert w in text, (w, text[-3000:])
    return text


def test_a_restore_refuses_a_run_that_excludes_a_master(default_cluster):
    # finding 1: --exclude master-2 restored master-1 alone, whose etcd then never had quorum
    snapshot = a_backup(default_cluster)
    for leave_out in (["--exclude", "@fake/master-2"], ["--limit", "masters"]):
        out = run_pyinfra(default_cluster, "-y", *leave_out, "--data", f"snapshot={snapshot}", state="converged",
                          deploy="restore.py", check=False)
        refused(out, "restore.py restores every etcd member", "not in this run",
                "run it without --limit and --exclude")


@pytest.mark.parametrize("deploy, data", [
    ("reset.py", []), ("backup.py", []), ("restore.py", ["snapshot"]),
])
def test_the_playbooks_refuse_hosts_of_another_cluster(default_cluster, deploy, data):
    # finding 2: reset.py deleted another cluster's etcd data, backup.py and restore.py acted on it
    args = ["--data", f"snapshot={a_backup(default_cluster)}"] if data else []
    out = run_pyinfra(default_cluster, "-y", *args, state="converged", deploy=deploy, check=False,
                      env={"KTHW_FAKE_OTHER_IDENTITY": "1"})
    refused(out, "holds another cluster identity", "/var/lib/kubernetes/pki/ca.crt",
            "python -m kthw pki adopt")


def test_a_reset_of_another_clusters_hosts_is_allowed_when_asked_for(default_cluster):
    out = run_pyinfra(default_cluster, "--dry", "--data", "kthw_replace_identity=yes", state="converged",
                      deploy="reset.py", env={"KTHW_FAKE_OTHER_IDENTITY": "1"})
    assert "reset | services, pods, files, data, network state removed" in out.stdout + out.stderr


def test_moving_the_local_state_aside_needs_the_whole_cluster(default_cluster):
    # finding 3: resetting worker-2 alone moved the running cluster's PKI aside
    pki = load_cluster(default_cluster).pki_dir
    out = run_pyinfra(default_cluster, "-y", "--limit", "@fake/worker-2", "--data", "reset_local_state=yes",
                      state="converged", deploy="reset.py", check=False)
    refused(out, "moves the whole cluster's PKI and kubeconfigs aside", "loadbalancer, master-1, master-2, worker-1")
    assert (pki / "ca.crt").exists()
    # resetting one machine and keeping the local state stays possible
    run_pyinfra(default_cluster, "--dry", "--limit", "@fake/worker-2", state="converged", deploy="reset.py")


def test_a_backup_whose_source_master_is_not_in_the_run_is_refused(default_cluster):
    # finding 4: --limit master-2 without backup_from exited 0 and took no backup
    out = run_pyinfra(default_cluster, "-y", "--limit", "@fake/master-2", state="converged", deploy="backup.py",
                      check=False)
    refused(out, "backup.py takes its snapshot on master-1", "master-1 is not in this run",
            "--data backup_from=NAME")
    out = run_pyinfra(default_cluster, "--dry", "--limit", "@fake/master-2", "--data", "backup_from=master-2",
                      state="converged", deploy="backup.py")
    assert "backup | etcd snapshot taken on master-2" in out.stdout + out.stderr


def test_a_plan_that_moves_a_running_nodes_pod_subnet_is_refused(default_cluster):
    # finding 5: from an operator machine without the record, nodes got the first free subnets and
    # running pods lost their network; nothing refused it
    env = {"KTHW_FAKE_POD_SUBNETS": "worker-2=10.244.7.0/24"}
    out = run_pyinfra(default_cluster, "-y", state="converged", check=False, env=env)
    refused(out, "records other pod subnets than this plan gives: worker-2 10.244.7.0/24 -> ",
            "python -m kthw pki adopt", "kthw_move_pod_subnets=yes")
    out = run_pyinfra(default_cluster, "--dry", "--data", "kthw_move_pod_subnets=yes", state="converged", env=env)
    assert "control plane | record of the nodes' pod subnets" in out.stdout + out.stderr
