"""etcd's upkeep in the deploy (operations/etcd.py: upkeep) on @fake hosts: a member with enough
free pages is defragmented in its turn, behind the others' health; a NOSPACE alarm is cleared
the same way; a CORRUPT member is reported and left alone; a converged cluster pays nothing."""

from __future__ import annotations

from tests.plan.conftest import run_pyinfra
from tests.plan.test_day_two import changed_hosts

DEFRAG = "etcd | defragmented once etcd.defrag_free_mib of its file is free, one member at a time"


def defrags(ops: dict) -> dict[str, list[str]]:
    return {name: hosts for name, hosts in ops.items() if name.startswith(DEFRAG)}


def test_only_a_member_with_enough_free_pages_is_defragmented(default_cluster):
    assert changed_hosts(run_pyinfra(default_cluster, "--dry", "--json", state="converged")) == {}
    ops = changed_hosts(run_pyinfra(default_cluster, "--dry", "--json", state="converged",
                                    env={"KTHW_FAKE_ETCD_FREE_MIB": "master-1=10,master-2=100"}))
    assert ops == {DEFRAG: ["@fake/master-2"]}, ops
    out = run_pyinfra(default_cluster, "-y", "-vv", state="converged",
                      env={"KTHW_FAKE_ETCD_FREE_MIB": "master-1=100,master-2=100"})
    assert "master-1: etcd's database is 135 MiB, 100 MiB of it free: defragmenting it" in out.stdout + out.stderr
    commands = [line for line in out.stderr.splitlines() if " defrag " in line]
    assert len(commands) == 2, commands  # one command per member, in turn (serial)
    # behind the other member's health, and healthy again before the next member goes
    (first,) = [c for c in commands if c.startswith("[@fake/master-1]")]
    assert "not defragmenting etcd: another member is not healthy" in first
    assert "--endpoints=https://192.168.56.12:2379" in first and "endpoint health" in first
    assert first.index("endpoint health") < first.index(" defrag ") < first.rindex("etcd not ready")
    assert "alarm disarm" not in first


def test_a_nospace_alarm_is_defragmented_and_disarmed_and_a_corrupt_member_left_alone(default_cluster):
    out = run_pyinfra(default_cluster, "-y", "-vv", state="converged",
                      env={"KTHW_FAKE_ETCD_ALARMS": "master-1=NOSPACE,master-2=CORRUPT",
                           "KTHW_FAKE_ETCD_FREE_MIB": "master-2=500"})
    text = out.stdout + out.stderr
    commands = [line for line in out.stderr.splitlines() if " defrag " in line]
    assert len(commands) == 1 and "alarm disarm" in commands[0], commands
    assert "master-1: etcd raised a NOSPACE alarm" in text
    assert "master-2: etcd raised a CORRUPT alarm" in text and "Not defragmenting it" in text
