"""Backup and restore of etcd (backup.py, restore.py): objects deleted and every member's data
wrecked after the backup come back from it, Secrets still decrypt, the nodes are Ready."""

from __future__ import annotations

import json
import stat
import sys

from kthw.artifacts import sha256_file
from kthw.backup import available
from tests.lab.lab import Lab, reference_only, sh
from tests.lab.test_cluster import masters, smoke_image


def pyinfra(lab: Lab, deploy: str, *args: str, label: str, check: bool = True):
    cmd = [sys.executable, "-m", "pyinfra", "-y", "inventory.py", deploy, *args]
    return lab.timed(label, cmd) if check else sh(cmd, env=lab.env, check=False)


def test_a_backup_brings_back_what_was_deleted_and_wrecked(lab, tmp_path):
    reference_only(lab)
    lab.kubectl("create", "secret", "generic", "kthw-backup-probe", "--from-literal=k=before")
    lab.kubectl("create", "deployment", "kthw-backup-web", f"--image={smoke_image(lab)}", "--", "sleep", "86400")

    before = set(available(lab.cluster))
    pyinfra(lab, "backup.py", label="etcd backup")
    taken = sorted(set(available(lab.cluster)) - before)
    assert len(taken) == 1
    db = taken[0]
    sidecars = [db.with_name(db.name + ".sha256"), db.with_suffix(".json"),
                db.with_name(db.stem + ".encryption-config.yaml")]
    for path in (db, *sidecars):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sidecars[0].read_text().split()[0] == sha256_file(db)
    meta = json.loads(sidecars[1].read_text())
    assert meta["taken_on"] == "master-1" and meta["etcd_status"]["totalKey"] > 100
    for m in masters(lab):  # nothing left behind on the masters
        assert lab.script(m, "ls /var/lib/kthw/backup/ /home/*/.kthw-upload/ 2>/dev/null | grep snap || true") == ""

    # a damaged copy is refused before any host is touched
    bad = tmp_path / db.name
    for path in (db, *sidecars):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    bad.write_bytes(bad.read_bytes()[:-1] + b"\0")
    refused = pyinfra(lab, "restore.py", "--data", f"snapshot={bad}", label="", check=False)
    assert refused.returncode != 0 and "does not match its recorded sha256" in refused.stdout + refused.stderr

    # the objects deleted, then every member's data destroyed (etcd stopped, its data gone)
    lab.kubectl("delete", "secret", "kthw-backup-probe")
    lab.kubectl("delete", "deployment", "kthw-backup-web")
    for m in masters(lab):
        lab.ssh(m, "systemctl stop kube-apiserver etcd && rm -rf /var/lib/etcd/member")

    pyinfra(lab, "restore.py", "--data", f"snapshot={db}", label="etcd restore")

    assert lab.kubectl("get", "secret", "kthw-backup-probe", "-o", "jsonpath={.data.k}") == "YmVmb3Jl"  # "before"
    lab.kubectl("rollout", "status", "deployment/kthw-backup-web", "--timeout=180s", timeout=200)
    lab.wait("every node Ready", lambda: set(lab.kubectl(
        "get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}").split()) == {"True"},
        timeout=180)
    members = lab.ssh(masters(lab)[0], "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 "
                      "--cacert=/etc/etcd/etcd-ca.crt --cert=/etc/etcd/etcd-server.crt --key=/etc/etcd/etcd-server.key "
                      "member list -w json")
    assert len(json.loads(members)["members"]) == len(lab.cluster.masters)
    for m in masters(lab):  # the wrecked data was kept aside, not deleted; the snapshot is gone
        assert lab.script(m, "ls -d /var/lib/etcd.before-restore-* | wc -l").strip() == "1"
        assert lab.script(m, "test -e /var/lib/kthw/backup/snapshot.db && echo left || true").strip() == ""
    # the restored cluster is the deployed one: a deploy changes nothing
    assert not [name for name, p in lab.plan().items() if p["hosts_with_change"]]
    lab.kubectl("delete", "secret", "kthw-backup-probe")
    lab.kubectl("delete", "deployment", "kthw-backup-web")
