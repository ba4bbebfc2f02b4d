"""Scheduled etcd snapshots on the masters (operations/snapshots.py): the script run here with
stand-ins for etcdctl and etcdutl, its files taken by restore's own checks, the timer's times."""

from __future__ import annotations

import datetime as dt
import doctest
import json
import os
import shutil
import stat
import subprocess

import pytest
import yaml

import kthw.snapshots
from kthw.backup import BackupError, check_backup, new_backup, record
from kthw.checks import _HOURS, _MINUTES
from kthw.paths import ENCRYPTION_CONFIG, ETCD_SNAPSHOT_SCRIPT, ETCD_SNAPSHOTS
from operations.snapshots import on_calendar, randomized_delay
from tests.conftest import cluster_file
from tests.unit.test_rendered import rendered

STATUS = '{"hash":1,"revision":1234,"totalKey":567,"totalSize":2097152,"version":"3.6.0"}'


@pytest.fixture
def master(tmp_path):
    """A master's file system in miniature: the rendered script pointed at folders under tmp_path,
    etcdctl writing random bytes, etcdutl printing a status, `date` counting seconds."""
    raw = yaml.safe_load((cluster_file(tmp_path / "c")).read_text())
    raw["backup"] = {"keep": 3}
    path = tmp_path / "c" / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    from kthw.context import prepared_cluster

    cluster = prepared_cluster(str(path))
    snaps, enc = tmp_path / "etcd-snapshots", tmp_path / "encryption-config.yaml"
    shutil.copy(cluster.pki_dir / "encryption-config.yaml", enc)
    script = rendered(path, "master-1")[ETCD_SNAPSHOT_SCRIPT].decode()
    script = script.replace(ETCD_SNAPSHOTS, str(snaps)).replace(ENCRYPTION_CONFIG, str(enc))
    (tmp_path / "kthw-etcd-snapshot").write_text(script)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in {
        "etcdctl": 'for a; do last=$a; done; [ -z "${FAIL:-}" ] || { echo partial > "$last"; exit 1; }; '
                   'head -c 8192 /dev/urandom > "$last"',
        "etcdutl": f"echo '{STATUS}'",
        "date": f'n=$(cat {tmp_path}/clock 2>/dev/null || echo 0); echo $((n + 1)) > {tmp_path}/clock; '
                'printf "20261207T0600%02dZ\\n" "$n"',
    }.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)

    def run(**env) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(tmp_path / "kthw-etcd-snapshot")], capture_output=True, text=True,
                              env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", **env})

    return cluster, snaps, run


def test_the_script_is_valid_posix_shell(tmp_path):
    script = rendered(cluster_file(tmp_path), "master-2")[ETCD_SNAPSHOT_SCRIPT].decode()
    (tmp_path / "s").write_text(script)
    subprocess.run(["sh", "-n", tmp_path / "s"], check=True)
    if shutil.which("shellcheck"):  # (not installed on every machine that runs the tests)
        subprocess.run(["shellcheck", "-s", "sh", tmp_path / "s"], check=True)
    assert "taken_on\": \"master-2\"" in script and "keep=8" in script


def test_a_snapshot_lands_whole_in_backup_py_s_format_and_restore_takes_it(master, tmp_path):
    cluster, snaps, run = master
    out = run()
    assert out.returncode == 0, out.stderr
    assert "etcd-20261207T060000Z.db taken" in out.stdout
    assert stat.S_IMODE(snaps.stat().st_mode) == 0o700
    names = sorted(p.name for p in snaps.iterdir() if not p.name.startswith("."))
    assert names == ["etcd-20261207T060000Z.db", "etcd-20261207T060000Z.db.sha256",
                     "etcd-20261207T060000Z.encryption-config.yaml", "etcd-20261207T060000Z.json"]
    for name in names:
        assert stat.S_IMODE((snaps / name).stat().st_mode) == 0o600, name
    subprocess.run(["sha256sum", "-c", "etcd-20261207T060000Z.db.sha256"], cwd=snaps, check=True,
                   capture_output=True)
    # the same .sha256 and .json as backup.py's own record() writes for the same snapshot
    ours = new_backup(cluster)
    shutil.copy(snaps / names[0], ours.db)
    shutil.copy(snaps / names[2], ours.encryption_config)
    sha = (snaps / names[1]).read_text().split()[0]
    record(cluster, ours, "master-1", f"{STATUS}\n{sha}  x\n{sha256(ours.encryption_config)}  y\n")
    scheduled = json.loads((snaps / names[3]).read_text())
    recorded = json.loads(ours.meta_file.read_text())
    assert list(scheduled) == list(recorded)  # same keys, same order
    assert {**scheduled, "time": "t"} == {**recorded, "time": "t"}
    assert (snaps / names[3]).read_text().startswith('{\n  "cluster": ')  # json.dumps(indent=2), as record()
    assert (snaps / names[1]).read_text() == f"{sha}  etcd-20261207T060000Z.db\n"
    # restore's own checks take the scheduled snapshot as they take a backup
    copy = tmp_path / "fetched"
    shutil.copytree(snaps, copy)
    assert check_backup(cluster, str(copy / names[0])).db == (copy / names[0]).resolve()


def sha256(path) -> str:
    from kthw.artifacts import sha256_file

    return sha256_file(path)


def test_the_newest_are_kept_each_with_what_belongs_to_it(master):
    cluster, snaps, run = master
    for _ in range(5):
        assert run().returncode == 0
    dbs = sorted(p.name for p in snaps.glob("etcd-*.db"))
    assert dbs == [f"etcd-20261207T0600{n:02d}Z.db" for n in (2, 3, 4)]  # keep: 3
    assert len(list(snaps.glob("etcd-*"))) == 3 * 4  # nothing of the pruned ones left


def test_an_interrupted_run_never_leaves_a_snapshot_that_looks_whole(master):
    cluster, snaps, run = master
    assert run().returncode == 0
    failed = run(FAIL="1")  # etcdctl wrote half a file and failed
    assert failed.returncode != 0
    assert sorted(p.name for p in snaps.glob("etcd-*.db")) == ["etcd-20261207T060000Z.db"]
    assert not list(snaps.glob(".partial-*"))  # its work folder went with it
    # a run killed outright: its work folder and the sidecars of a snapshot that never landed stay...
    (snaps / ".partial-20261207T060100Z").mkdir()
    (snaps / ".partial-20261207T060100Z" / "etcd-20261207T060100Z.db").write_bytes(b"half")
    for sidecar in ("db.sha256", "json", "encryption-config.yaml"):
        (snaps / f"etcd-20261207T060100Z.{sidecar}").write_text("x")
    assert run().returncode == 0  # ...until the next run, which removes them first
    left = sorted(p.name for p in snaps.iterdir() if p.name != ".lock")
    assert left == sorted(f"etcd-20261207T0600{n:02d}Z{ext}" for n in (0, 2)
                          for ext in (".db", ".db.sha256", ".json", ".encryption-config.yaml"))


def test_what_health_counts_as_a_snapshot_is_what_the_script_lands_whole(master):
    cluster, snaps, run = master
    for _ in range(2):
        assert run().returncode == 0
    # a run killed while moving its files in: the sidecars landed, the .db is still in the work folder
    (snaps / ".partial-20261207T060200Z").mkdir()
    (snaps / ".partial-20261207T060200Z" / "etcd-20261207T060200Z.db").write_bytes(b"whole")
    for sidecar in ("db.sha256", "json", "encryption-config.yaml"):
        (snaps / f"etcd-20261207T060200Z.{sidecar}").write_text("x")
    whole = kthw.snapshots.whole(os.listdir(snaps))  # the names only, as health's probe lists them
    assert whole == ["etcd-20261207T060000Z.db", "etcd-20261207T060001Z.db"]
    assert [kthw.snapshots.taken(n) for n in whole] == [dt.datetime(2026, 12, 7, 6, 0, sec, tzinfo=dt.UTC)
                                                        for sec in (0, 1)]
    assert doctest.testmod(kthw.snapshots).failed == 0


def test_a_damaged_scheduled_snapshot_is_refused_by_restore(master, tmp_path):
    cluster, snaps, run = master
    assert run().returncode == 0
    db = snaps / "etcd-20261207T060000Z.db"
    db.write_bytes(db.read_bytes()[:-1] + b"\0")
    with pytest.raises(BackupError, match="does not match its recorded sha256"):
        check_backup(cluster, str(db))


def test_the_masters_take_turns_at_fixed_utc_times():
    # every allowed interval, for 1 to 5 masters: systemd reads each time, and no two masters share one
    exprs = []
    for every in [m * 60 for m in _MINUTES] + [h * 3600 for h in _HOURS]:
        for masters in (1, 2, 3, 5):
            mine = [on_calendar(every, i, masters) for i in range(masters)]
            assert len(set(mine)) == masters, mine
            exprs += mine
            # the random delay stays within a tenth of the spacing between two masters
            assert randomized_delay(every, masters) * 10 <= every // masters
    out = subprocess.run(["systemd-analyze", "calendar", *sorted(set(exprs))], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(["systemd-analyze", "calendar", "--iterations=4", on_calendar(6 * 3600, 1, 2)],
                         capture_output=True, text=True, check=True)
    times = [line.split()[-2] for line in out.stdout.splitlines() if "Iter." in line or "Next" in line]
    assert sorted(times) == ["03:00:00", "09:00:00", "15:00:00", "21:00:00"]  # the second of two masters at 6h


def local_run(snaps):
    """kthw.snapshots.Run on this machine, against ``snaps`` in place of a master's folder."""
    def run(command: str) -> list[str]:
        out = subprocess.run(["sh", "-c", command.replace(ETCD_SNAPSHOTS, str(snaps))], capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise BackupError(out.stderr.strip())
        return out.stdout.splitlines()
    return run


def test_the_newest_or_a_named_snapshot_is_fetched_whole_and_restore_takes_it(master):
    from kthw.snapshots import fetch, sidecars

    cluster, snaps, run = master
    for _ in range(3):
        assert run().returncode == 0
    node = cluster.node("master-1")
    newest = fetch(cluster, node, None, local_run(snaps))
    assert newest.db.name == "etcd-20261207T060002Z.db"
    for name in sidecars(newest.db.name):
        assert (newest.db.parent / name).read_bytes() == (snaps / name).read_bytes()
        assert stat.S_IMODE((newest.db.parent / name).stat().st_mode) == 0o600
    assert check_backup(cluster, str(newest.db)) == newest.__class__(newest.db.resolve())
    named = fetch(cluster, node, "etcd-20261207T060000Z.db", local_run(snaps))
    assert named.db.name == "etcd-20261207T060000Z.db"
    assert fetch(cluster, node, None, local_run(snaps)) == newest  # fetched again: the same, kept
    with pytest.raises(BackupError, match="etcd-20991231T235959Z.db is missing"):
        fetch(cluster, node, "etcd-20991231T235959Z.db", local_run(snaps))


def test_a_damaged_or_clashing_snapshot_is_not_written(master):
    from kthw.backup import backups_dir
    from kthw.snapshots import fetch

    cluster, snaps, run = master
    assert run().returncode == 0
    node = cluster.node("master-1")
    db = snaps / "etcd-20261207T060000Z.db"
    good = db.read_bytes()
    db.write_bytes(good[:-1] + b"\0")
    with pytest.raises(BackupError, match="damaged on the master or on the way. Nothing was written"):
        fetch(cluster, node, None, local_run(snaps))
    assert not list(backups_dir(cluster).glob("etcd-*"))
    db.write_bytes(good)
    with pytest.raises(BackupError, match="says it was taken elsewhere"):
        fetch(cluster, cluster.node("master-2"), None, local_run(snaps))
    backups_dir(cluster).mkdir(parents=True, exist_ok=True)
    (backups_dir(cluster) / db.name).write_bytes(b"another snapshot of that name")
    with pytest.raises(BackupError, match="holds another snapshot"):
        fetch(cluster, node, None, local_run(snaps))
    assert (backups_dir(cluster) / db.name).read_bytes() == b"another snapshot of that name"


@pytest.mark.parametrize("value, expected", [
    ("/tmp/etcd-20261207T060000Z.db", None),
    (".kthw/x/backups/etcd-20261207T060000Z.db", None),
    ("master-2:etcd-20261207T060000Z.db", ("master-2", "etcd-20261207T060000Z.db")),
    ("worker-1:etcd-20261207T060000Z.db", "'worker-1' is not a master"),
    ("master-1:../../etc/shadow", "is not the name of a scheduled snapshot"),
])
def test_restore_tells_a_masters_snapshot_from_a_local_path(tmp_path, value, expected):
    from kthw.snapshots import parse_master_ref, scheduled_name
    from tests.conftest import make_cluster

    cluster = make_cluster(yaml.safe_load(cluster_file(tmp_path).read_text()), tmp_path)
    if isinstance(expected, str):
        with pytest.raises(BackupError, match=expected):
            parse_master_ref(cluster, value)
    else:
        ref = parse_master_ref(cluster, value)
        assert (None if ref is None else (ref[0].name, ref[1])) == expected
    assert scheduled_name("newest") is None and scheduled_name("etcd-20261207T060000Z.db")
    with pytest.raises(BackupError, match="neither `newest`"):
        scheduled_name("../etcd-20261207T060000Z.db")


def test_no_snapshot_that_would_leave_etcd_s_disk_without_room(master, tmp_path):
    cluster, snaps, run = master
    script = tmp_path / "kthw-etcd-snapshot"
    db = tmp_path / "etcd" / "member" / "snap" / "db"
    db.parent.mkdir(parents=True)
    subprocess.run(["truncate", "-s", "8T", db], check=True)  # sparse: a database no disk here can hold twice
    script.write_text(script.read_text().replace("/var/lib/etcd/member/snap/db", str(db)))
    out = run()
    assert out.returncode != 0 and "not taking a snapshot" in out.stderr
    assert not list(snaps.glob("etcd-*"))
    subprocess.run(["truncate", "-s", "4096", db], check=True)
    assert run().returncode == 0 and len(list(snaps.glob("etcd-*.db"))) == 1
