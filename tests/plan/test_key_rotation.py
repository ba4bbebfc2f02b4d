"""An encryption-key rotation's deploys on @fake hosts (kthw/key_rotation.py): the hosts' earlier
configs are this cluster's, the rewrite runs once on the first master while etcd holds a value
sealed with an old key and never after, and a restore of a backup from before adds its key back."""

from __future__ import annotations

import hashlib

import pytest

from kthw import key_rotation
from kthw.model import load_cluster
from kthw.pki import ensure_pki
from tests.conftest import cluster_file
from tests.plan.conftest import SECRET_MARKERS, run_pyinfra
from tests.plan.test_day_two import a_backup, changed_hosts

REWRITE = "control plane | every Secret rewritten with key2"


def reached(cluster) -> key_rotation.Reader:
    """Every master holds the local config and restarted since (what a completed deploy leaves)."""
    digest = hashlib.sha256((cluster.pki_dir / "encryption-config.yaml").read_bytes()).hexdigest()
    masters = {m.name: key_rotation.MasterConfig(digest, 100, 200) for m in cluster.masters}
    return lambda: key_rotation.ClusterView(masters, {})


@pytest.fixture
def rotating(tmp_path):
    """A cluster file whose PKI is at step 1 of a key rotation; the config before it, by digest."""
    path = cluster_file(tmp_path)
    cluster = load_cluster(path)
    ensure_pki(cluster)
    before = hashlib.sha256((cluster.pki_dir / "encryption-config.yaml").read_bytes()).hexdigest()
    key_rotation.begin(cluster)
    return path, cluster, before


def test_the_deploy_after_begin_hands_out_the_new_config_to_masters_that_hold_the_old_one(rotating):
    path, _, before = rotating
    out = run_pyinfra(path, "--dry", "--json", state="converged", env={"KTHW_FAKE_ENCRYPTION_CONFIG_SHA": before})
    ops = changed_hosts(out)
    assert ops["control plane | encryption at rest config"] == ["@fake/master-1", "@fake/master-2"]
    assert set(ops["control plane | kube-apiserver restarted on change, one master at a time"]) == {
        "@fake/master-1", "@fake/master-2"}
    assert not any(name.startswith("control plane | every Secret rewritten") for name in ops)
    # a config this cluster never had is still another cluster's
    out = run_pyinfra(path, "--dry", state="converged", check=False, env={"KTHW_FAKE_ENCRYPTION_CONFIG_SHA": "2" * 64})
    assert out.returncode != 0 and "encryption-config.yaml" in out.stdout + out.stderr


def test_after_switch_the_first_master_rewrites_only_while_a_value_has_an_old_key(rotating):
    path, cluster, _ = rotating
    key_rotation.switch(cluster, reached(cluster))
    ops = changed_hosts(run_pyinfra(path, "--dry", "--json", state="converged",
                                    env={"KTHW_FAKE_SEALED_WITH": "key1=3,key2=5"}))
    rewrite = [name for name in ops if name.startswith(REWRITE)]
    assert rewrite == [f"{REWRITE} (3 with key1 before), none left sealed otherwise"], list(ops)
    assert ops[rewrite[0]] == ["@fake/master-1"]
    # once every value carries the new key, the rerun changes nothing
    assert changed_hosts(run_pyinfra(path, "--dry", "--json", state="converged",
                                     env={"KTHW_FAKE_SEALED_WITH": "key2=8"})) == {}
    # the key never shows in the plan or the commands
    out = run_pyinfra(path, "-y", "-vv", state="converged", env={"KTHW_FAKE_SEALED_WITH": "key1=3,key2=5"})
    text = out.stdout + out.stderr
    assert "kubectl --kubeconfig /etc/kubernetes/admin.kubeconfig get secrets -A -o json" in text
    for _, secret in key_rotation.local_keys(cluster):
        assert secret not in text
    assert not any(marker in text for marker in SECRET_MARKERS)


def test_a_restore_of_a_backup_from_before_the_rotation_adds_its_key_back(tmp_path):
    path = cluster_file(tmp_path)
    snapshot = a_backup(path)  # sealed with key1, the only key then
    cluster = load_cluster(path)
    key_rotation.begin(cluster)
    key_rotation.switch(cluster, reached(cluster))
    done = reached(cluster)()
    key_rotation.finish(cluster, lambda: key_rotation.ClusterView(done.masters, {"key2": 4}))
    assert [n for n, _ in key_rotation.local_keys(cluster)] == ["key2"]
    args = ("--data", f"snapshot={snapshot}")
    ops = changed_hosts(run_pyinfra(path, "--dry", "--json", *args, state="converged", deploy="restore.py"))
    names = list(ops)
    assert ops["restore | encryption config with the backup's keys on every master"] == [
        "@fake/master-1", "@fake/master-2"]
    assert names.index("restore | encryption config with the backup's keys on every master") < names.index(
        "restore | kube-apiserver started and ready, then the controller-manager and scheduler")
    assert [n for n, _ in key_rotation.local_keys(cluster)] == ["key2"]  # a dry run changes nothing here
    out = run_pyinfra(path, "-y", *args, state="converged", deploy="restore.py")
    assert "the backup's keys added to the local encryption config" in out.stdout + out.stderr
    # key2 still writes, key1 reads again: step 2, so the next deploy rewrites key1's Secrets
    assert [n for n, _ in key_rotation.local_keys(cluster)] == ["key2", "key1"]
    assert key_rotation.step_of(key_rotation.local_keys(cluster)) == "switch"
