"""Scheduled etcd snapshots on the masters (operations/snapshots.py): with a one-minute interval
each master's timer takes its turn, the newest backup.keep stay, each whole and in backup.py's
format; the schedule turned off leaves the snapshots, backup.py fetches the newest, and restore.py
brings a Secret back from one that is still on its master.

Not run yet (written without a lab at hand): the first run may need its timeouts adjusted."""

from __future__ import annotations

import datetime as dt
import sys
import time

import pytest
import yaml

from kthw.backup import available
from tests.lab.lab import Lab, reference_only, sh
from tests.lab.test_cluster import masters

FOLDER = "/var/lib/etcd-snapshots"
SNAPSHOTS = f"ls {FOLDER} | grep -E '^etcd-[0-9]{{8}}T[0-9]{{6}}Z[.]db$' | sort || true"


def variant(lab: Lab, name: str, **backup) -> object:
    """The lab's cluster file with another backup section (same machines, same state folder)."""
    raw = yaml.safe_load(lab.cluster_file.read_text())
    raw["backup"] = backup
    path = lab.cluster_file.with_name(f"{lab.cluster_file.stem}-{name}.yaml")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def pyinfra(lab: Lab, cluster_file, deploy: str, *args: str, label: str):
    start = time.monotonic()
    out = sh([sys.executable, "-m", "pyinfra", "-y", "inventory.py", deploy, *args],
             env={"KTHW_CLUSTER": str(cluster_file)})
    lab.timings[label] = time.monotonic() - start
    return out


def snapshots(lab: Lab, master: str) -> list[str]:
    return lab.script(master, SNAPSHOTS).split()


def started(lab: Lab, master: str) -> str:
    return lab.ssh(master, "systemctl show -p ExecMainStartTimestampMonotonic --value etcd kube-apiserver")


@pytest.mark.day_two
def test_scheduled_snapshots_are_taken_in_turn_pruned_fetched_and_restored(lab):
    reference_only(lab)
    ms = masters(lab)
    for m in ms:  # the cold deploy's default schedule (every 6 h)
        assert lab.ssh(m, "systemctl is-enabled kthw-etcd-snapshot.timer").strip() == "enabled"
    before = {m: started(lab, m) for m in ms}
    fast = variant(lab, "snapshots", every="1min", keep=2)
    try:
        pyinfra(lab, fast, "deploy.py", label="deploy with snapshots every minute")
        assert {m: started(lab, m) for m in ms} == before  # only the timer restarted, nothing of the cluster

        # the timers fire (master-1 at :00, master-2 at :30 of every minute) and prune: once the
        # first snapshot seen is gone, at least three were taken there, and two stay
        first = {m: lab.wait(f"a first snapshot on {m}", lambda m=m: snapshots(lab, m), timeout=120)[0] for m in ms}
        for m in ms:
            lab.wait(f"{first[m]} pruned on {m}", lambda m=m: first[m] not in snapshots(lab, m)
                     and len(snapshots(lab, m)) == 2, timeout=300, interval=5)
        for m in ms:
            check = lab.script(m, f"""cd {FOLDER}
                stat -c '%a %n' . etcd-*
                ls -A | grep -c '^[.]partial-' || true
                for f in etcd-*.db.sha256; do sha256sum -c "$f" >/dev/null && echo "ok $f"; done
                journalctl -u kthw-etcd-snapshot.service -o cat --no-pager | grep -c ' taken, sha256 ' || true""")
            lines = check.splitlines()
            assert lines[0] == "700 .", (m, check)
            assert all(line.startswith("600 etcd-") for line in lines[1:9]) and len(lines[1:9]) == 8, (m, check)
            assert lines[9] == "0", (m, check)  # no work folder left behind
            assert sum(line.startswith("ok ") for line in lines) == 2, (m, check)
            assert int(lines[-1]) >= 3, (m, check)
        # the masters take turns: their snapshots are taken half a minute apart, never together
        seconds = {m: {int(name[18:20]) for name in snapshots(lab, m)} for m in ms}
        assert all(s < 30 for s in seconds[ms[0]]) and all(s >= 30 for s in seconds[ms[1]]), seconds

        # a Secret, then a snapshot of master-1 taken after it
        lab.kubectl("create", "secret", "generic", "kthw-snapshot-probe", "--from-literal=k=before")
        after = f"etcd-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.db"
        lab.wait("a snapshot of master-1 with the Secret in it",
                 lambda: [s for s in snapshots(lab, ms[0]) if s > after], timeout=150)

        # turned off: each timer stopped and removed, the snapshots stay where they were
        off = variant(lab, "snapshots-off", scheduled=False)
        pyinfra(lab, off, "deploy.py", label="deploy with the schedule off")
        for m in ms:
            left = lab.script(m, "systemctl is-enabled kthw-etcd-snapshot.timer 2>/dev/null; "
                                 "ls /etc/systemd/system/kthw-etcd-snapshot.* /usr/local/sbin/kthw-etcd-snapshot "
                                 "2>/dev/null; true")
            assert left.strip() in ("", "not-found"), (m, left)
            assert len(snapshots(lab, m)) == 2, m
        name = snapshots(lab, ms[0])[-1]
        assert name > after

        # backup.py fetches the newest instead of taking one: the same four files, checked
        known = set(available(lab.cluster))
        pyinfra(lab, off, "backup.py", "--data", "scheduled=newest", label="backup.py: newest scheduled fetched")
        new = sorted(set(available(lab.cluster)) - known)
        assert [p.name for p in new] == [name], (new, name)
        assert lab.script(ms[0], f"cat {FOLDER}/{name}.sha256") == new[0].with_name(name + ".sha256").read_text()
        assert len(snapshots(lab, ms[0])) == 2  # nothing changed on the master

        # restored from the master's snapshot: the Secret deleted since comes back
        lab.kubectl("delete", "secret", "kthw-snapshot-probe")
        pyinfra(lab, off, "restore.py", "--data", f"snapshot={ms[0]}:{name}", label="restore from a master's snapshot")
        assert lab.kubectl("get", "secret", "kthw-snapshot-probe", "-o", "jsonpath={.data.k}") == "YmVmb3Jl"
        lab.wait("every node Ready", lambda: set(lab.kubectl(
            "get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}").split())
            == {"True"}, timeout=180)
    finally:
        lab.kubectl("delete", "secret", "kthw-snapshot-probe", "--ignore-not-found", check=False)
        lab.deploy(label="deploy back to the lab's cluster file")
    for m in ms:  # the default schedule back, and a deploy now changes nothing
        assert lab.ssh(m, "systemctl is-enabled kthw-etcd-snapshot.timer").strip() == "enabled"
    assert not [n for n, p in lab.plan().items() if p["hosts_with_change"]]
