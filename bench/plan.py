"""What planning a deploy costs as the cluster grows, on pyinfra's @fake connector (no machine
is touched). Prints figures; asserts nothing.

    make bench-plan                       3 masters and 10, 50, 100, 300, 1000 workers
    python bench/plan.py 10 100           only these worker counts

For each size and for a fresh and a converged cluster: the operations each host plans (fewest,
most, and the most per kind of host), the wall time of `pyinfra --dry` (start-up, inventory,
PKI and kubeconfigs, every host's plan) and the peak memory of that process. The clusters use
ecdsa-p256 keys (rsa-2048 makes generating 1,000 kubelet keys the larger part of a cold run;
bench/pki.py measures the PKI) and a node network wide enough for them. The PKI is made once per
size, before the timed runs, as an operator machine has it after its first deploy.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kthw.model import DEFAULT_CLUSTER_FILE  # noqa: E402
from tests.conftest import cluster_file  # noqa: E402

SIZES = (10, 50, 100, 300, 1000)
MASTERS = 3
COUNTER = REPO / "bench" / "count_ops.py"  # a second deploy file: prints each host's operation count


def topology(workers: int) -> dict:
    """The shipped cluster with MASTERS masters and ``workers`` workers on a /16 node network."""
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    raw["network"].update(nodes="10.250.0.0/16", pods="10.32.0.0/12")
    raw["pki"]["key_type"] = "ecdsa-p256"
    raw["nodes"] = [{"name": "loadbalancer", "role": "loadbalancer", "ip": "10.250.0.2"}]
    raw["nodes"] += [{"name": f"master-{i}", "role": "master", "ip": f"10.250.0.{10 + i}"}
                     for i in range(1, MASTERS + 1)]
    raw["nodes"] += [{"name": f"worker-{i}", "role": "worker", "ip": f"10.250.{1 + i // 250}.{1 + i % 250}"}
                     for i in range(1, workers + 1)]
    return raw


def run(cluster: Path, state: str) -> dict:
    """One `pyinfra --dry` of deploy.py on @fake hosts: seconds, peak memory, operations per host."""
    env = {**os.environ, "KTHW_CLUSTER": str(cluster), "KTHW_FAKE_STATE": state, "PYINFRA_FAKE_DELAY": "0"}
    cmd = [sys.executable, "-m", "pyinfra", "tests/plan/fake_inventory.py", "deploy.py", str(COUNTER), "--dry"]
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        err.seek(0)
        text = err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pyinfra failed on {cluster} ({state}):\n{text[-3000:]}")
    ops = {m[1]: int(m[2]) for m in re.finditer(r"^kthw-ops (\S+) (\d+)$", text, re.M)}
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "ops": ops}


def per_role(ops: dict[str, int]) -> str:
    roles = {"loadbalancer": [], "master": [], "worker": []}
    for name, n in ops.items():
        roles["loadbalancer" if "loadbalancer" in name else "master" if "master" in name else "worker"].append(n)
    return " ".join(f"{r[0]}={min(v)}-{max(v)}" if min(v) != max(v) else f"{r[0]}={v[0]}"
                    for r, v in roles.items() if v)


def main(sizes: list[int]) -> None:
    print(f"# bench/plan.py, {dt.date.today()}, {os.cpu_count()} cores; {MASTERS} masters, 1 load balancer")
    print(f"{'workers':>7} {'state':>9} {'hosts':>5} {'ops/host':>9} {'by role (l, m, w)':>24} "
          f"{'plan s':>7} {'peak MiB':>8}")
    for workers in sizes:
        with tempfile.TemporaryDirectory(prefix="kthw-bench-plan-") as tmp:
            cluster = cluster_file(Path(tmp), topology(workers))
            run(cluster, "fresh")  # the PKI and kubeconfigs, as after a first deploy (not timed)
            for state in ("fresh", "converged"):
                r = run(cluster, state)
                counts = r["ops"].values()
                print(f"{workers:>7} {state:>9} {len(r['ops']):>5} {min(counts):>4}-{max(counts):<4} "
                      f"{per_role(r['ops']):>24} {r['seconds']:>7.1f} {r['peak_mib']:>8.0f}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or list(SIZES))
