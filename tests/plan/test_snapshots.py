"""The scheduled etcd snapshots in the deploy's plan (operations/snapshots.py) on @fake hosts:
masters only, the timer restarted only when its own unit changes, removed when turned off."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import yaml

from kthw.snapshots import sidecars
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


def on_a_master(tmp_path, cluster_path) -> tuple:
    """A scheduled snapshot (backup.py's four files, taken on master-1) in a folder laid out like
    master-1's /var/lib/etcd-snapshots, and out of the local backups."""
    from tests.plan.test_day_two import a_backup

    db = a_backup(cluster_path)
    db = Path(db)
    folder = tmp_path / "etcd-snapshots"
    folder.mkdir()
    for name in sidecars(db.name):
        shutil.move(db.parent / name, folder / name)
    return folder, db.name, db.parent


def test_backup_py_fetches_the_newest_scheduled_snapshot_instead_of_taking_one(tmp_path, default_cluster):
    folder, name, backups = on_a_master(tmp_path, default_cluster)
    env = {"KTHW_FAKE_SCHEDULED": str(folder)}
    ops = changed(run_pyinfra(default_cluster, "--dry", "--json", "--data", "scheduled=newest", state="converged",
                              deploy="backup.py", env=env))
    assert ops == {"backup | the newest scheduled snapshot of master-1 fetched, sha256 checked": ["@fake/master-1"]}
    assert not (backups / name).exists()  # --dry fetched nothing
    out = run_pyinfra(default_cluster, "-y", "--data", "scheduled=newest", state="converged", deploy="backup.py",
                      env=env)
    assert f"fetched {backups}/{name}" in out.stdout + out.stderr
    for part in sidecars(name):  # the same four files, the same bytes, 0600
        assert (backups / part).read_bytes() == (folder / part).read_bytes(), part
        assert stat.S_IMODE((backups / part).stat().st_mode) == 0o600
    # a name that is neither `newest` nor a snapshot's is refused while planning
    out = run_pyinfra(default_cluster, "--dry", "--data", "scheduled=latest", state="converged", deploy="backup.py",
                      check=False)
    assert out.returncode != 0 and "scheduled='latest' is neither `newest`" in out.stdout + out.stderr


def test_restore_py_takes_a_snapshot_from_a_master_with_the_same_checks_first(tmp_path, default_cluster):
    folder, name, backups = on_a_master(tmp_path, default_cluster)
    env = {"KTHW_FAKE_SCHEDULED": str(folder)}
    out = run_pyinfra(default_cluster, "--dry", "--json", "--data", f"snapshot=master-1:{name}", state="converged",
                      deploy="restore.py", env=env)
    ops = changed(out)
    assert ops["restore | etcd stopped on every member"] == MASTERS
    assert ops[f"restore | {name} uploaded to every etcd member"] == MASTERS
    assert (backups / name).read_bytes() == (folder / name).read_bytes()  # fetched, then checked
    # refused before any host is touched: a damaged snapshot on the master, a name it does not hold, a non-master
    db = folder / name
    db.write_bytes(db.read_bytes()[:-1] + b"\0")
    (backups / name).unlink()
    for value, why in ((f"master-1:{name}", "it was damaged on the master or on the way"),
                       ("master-1:etcd-20991231T235959Z.db", "failed"),
                       (f"worker-1:{name}", "'worker-1' is not a master"),
                       ("master-1:latest.db", "is not the name of a scheduled snapshot")):
        out = run_pyinfra(default_cluster, "-y", "-vv", "--data", f"snapshot={value}", state="converged",
                          deploy="restore.py", env=env, check=False)
        assert out.returncode != 0 and why in out.stdout + out.stderr, (value, out.stdout[-1500:], out.stderr[-1500:])
        assert "systemctl" not in out.stderr  # no command reached a host
        assert not (backups / name).exists()  # nothing written
