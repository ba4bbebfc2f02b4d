"""The scheduled etcd snapshots in the deploy's plan (operations/snapshots.py) on @fake hosts:
masters only, the timer restarted only when its own unit changes, removed when turned off."""

from __future__ import annotations

import json

import yaml

from tests.plan.conftest import run_pyinfra


def changed(out) -> dict[str, list[str]]:
    return {p["name"]: p["hosts_with_change"] for p in json.loads(out.stdout)["plan"] if p["hosts_with_change"]}


def with_backup(tmp_path, base, **backup):
    raw = yaml.safe_load(base.read_text())
    raw["backup"] = {**raw.get("backup", {}), **backup}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


MASTERS = ["@fake/master-1", "@fake/master-2"]


def test_a_fresh_cluster_gets_the_timer_on_every_master_only(default_cluster):
    ops = changed(run_pyinfra(default_cluster, "--dry", "--json"))
    mine = {name: hosts for name, hosts in ops.items() if name.startswith("etcd snapshots |")}
    assert mine == {"etcd snapshots | folder (0700)": MASTERS,
                    "etcd snapshots | script (checked by sh -n)": MASTERS,
                    "etcd snapshots | service unit": MASTERS,
                    "etcd snapshots | timer unit": MASTERS,
                    "etcd snapshots | timer running": MASTERS}
    names = list(ops)  # after the encryption config, which each snapshot keeps a copy of
    assert names.index("control plane | encryption at rest config") < names.index("etcd snapshots | timer running")
    out = run_pyinfra(default_cluster, "-y", "-vv", state="fresh")
    assert out.stderr.count("systemctl daemon-reload && systemctl enable kthw-etcd-snapshot.timer && "
                            "systemctl restart kthw-etcd-snapshot.timer") == 2
    assert "sh -n /usr/local/sbin/kthw-etcd-snapshot.kthw-new" in out.stderr


def test_keep_changes_only_the_script_and_every_restarts_only_the_timer(tmp_path, default_cluster):
    env = {"KTHW_FAKE_STATE_CLUSTER": str(default_cluster)}
    kept = changed(run_pyinfra(with_backup(tmp_path / "keep", default_cluster, keep=3), "--dry", "--json",
                               state="converged", env=env))
    assert kept == {"etcd snapshots | script (checked by sh -n)": MASTERS}  # read at each run: no restart
    every = with_backup(tmp_path / "every", default_cluster, every="1h")
    assert changed(run_pyinfra(every, "--dry", "--json", state="converged", env=env)) == {
        "etcd snapshots | timer unit": MASTERS, "etcd snapshots | timer running": MASTERS}
    out = run_pyinfra(every, "-y", "-vv", state="converged", env=env)
    assert out.stderr.count("systemctl daemon-reload && systemctl restart kthw-etcd-snapshot.timer") == 2
    assert "restart etcd" not in out.stderr and "restart kube-apiserver" not in out.stderr


def test_turned_off_the_timer_is_stopped_and_removed_and_the_snapshots_stay(tmp_path, default_cluster):
    off = with_backup(tmp_path, default_cluster, scheduled=False)
    out = run_pyinfra(off, "-y", "-vv", state="converged", env={"KTHW_FAKE_STATE_CLUSTER": str(default_cluster)})
    retire = [line for line in out.stderr.splitlines()
              if "systemctl disable --now kthw-etcd-snapshot.timer && rm -f " in line]
    assert len(retire) == 2, retire  # one per master
    for path in ("/etc/systemd/system/kthw-etcd-snapshot.timer", "/etc/systemd/system/kthw-etcd-snapshot.service",
                 "/usr/local/sbin/kthw-etcd-snapshot", "/var/lib/systemd/timers/stamp-kthw-etcd-snapshot.timer"):
        assert path in retire[0]
    assert "/var/lib/etcd-snapshots" not in retire[0]  # the snapshots are the operator's
    # converged without it: nothing to do, and no master is asked to place it again
    assert changed(run_pyinfra(off, "--dry", "--json", state="converged")) == {}
