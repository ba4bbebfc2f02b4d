"""etcd's upkeep in the deploy (operations/etcd.py: upkeep, docs/day-two.md: etcd upkeep): after
writing and deleting enough data, the deploy defragments every member, one at a time, each
member's database file shrinks, and no request through the load balancer fails meanwhile."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
import yaml

from kthw.commands import ETCDCTL
from tests.lab.lab import Lab, RequestLoop, reference_only
from tests.lab.test_cluster import masters
from tests.lab.test_scale import deploy

MIB = 1 << 20


def db_sizes(lab: Lab) -> dict[str, tuple[int, int]]:
    """Every member's (file size, part in use), as etcd reports them."""
    out = {}
    for m in masters(lab):
        status = json.loads(lab.script(m, f"{ETCDCTL} endpoint status -w json"))[0]["Status"]
        out[m] = (status["dbSize"], status["dbSizeInUse"])
    return out


@pytest.mark.day_two
def test_a_fragmented_etcd_is_defragmented_member_by_member_without_a_failed_request(lab, tmp_path):
    reference_only(lab)
    # ~45 MiB written as ConfigMaps, deleted, and the history compacted: free pages in every file
    blob = tmp_path / "blob"
    blob.write_text(base64.b64encode(os.urandom(520 * 1024)).decode())  # ~700 KiB, under etcd's 1.5 MiB
    names = [f"kthw-bulk-{i}" for i in range(64)]
    for name in names:
        lab.kubectl("create", "configmap", name, f"--from-file=b={blob}")
    lab.kubectl("delete", "configmap", *names)
    lab.script(masters(lab)[0], f"rev=$({ETCDCTL} endpoint status -w json | grep -o '\"revision\":[0-9]*' "
                                f"| head -1 | cut -d: -f2) && {ETCDCTL} compact $rev --physical >/dev/null")
    # `--physical` waits for the member etcdctl asked; the others finish compacting in their own time.
    deadline = time.monotonic() + 60
    before = db_sizes(lab)
    while not all(size - in_use > 32 * MIB for size, in_use in before.values()) and time.monotonic() < deadline:
        time.sleep(1)
        before = db_sizes(lab)
    print("\netcd before: " + ", ".join(f"{m} {s / MIB:.0f} MiB ({u / MIB:.0f} in use)"
                                        for m, (s, u) in before.items()))
    assert all(size - in_use > 32 * MIB for size, in_use in before.values()), before

    raw = yaml.safe_load(lab.cluster_file.read_text())
    raw["etcd"] = {"defrag_free_mib": 32}
    tidy = lab.cluster_file.with_name(lab.cluster_file.stem + "-upkeep.yaml")
    tidy.write_text(yaml.safe_dump(raw, sort_keys=False))
    start = time.monotonic()
    with RequestLoop(lab, name="kthw-upkeep-probe") as loop:
        deploy(tidy, "deploy that defragments every etcd member", lab)
    took = time.monotonic() - start
    after = db_sizes(lab)
    print(f"etcd after a {took:.0f} s deploy: " + ", ".join(f"{m} {s / MIB:.0f} MiB" for m, (s, _) in after.items())
          + f"; {loop.requests} requests through the load balancer, {len(loop.failures)} failed")
    assert loop.failures == [], loop.failures
    for m, (size, _) in after.items():
        assert size < before[m][0] - 32 * MIB, (m, before[m], size)
    # nothing left to do: the next run with that setting changes nothing
    assert not [name for name, p in lab.plan().items() if p["hosts_with_change"]]
