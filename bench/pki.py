"""How long generating the whole PKI and every kubeconfig takes, from nothing and on a rerun.

    python bench/pki.py           (or: make bench)

Prints figures; asserts nothing. Target: under 2 s for the default cluster from nothing.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kthw.kubeconfig import write_kubeconfigs  # noqa: E402
from kthw.model import DEFAULT_CLUSTER_FILE, parse_cluster  # noqa: E402
from kthw.pki import ensure_pki  # noqa: E402

RUNS = 5


def topology(masters: int, workers: int) -> dict:
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    lb = next(n for n in raw["nodes"] if n["role"] == "loadbalancer")
    raw["nodes"] = [copy.deepcopy(lb)]
    raw["nodes"] += [{"name": f"master-{i}", "role": "master", "ip": f"192.168.56.{10 + i}"}
                     for i in range(1, masters + 1)]
    raw["nodes"] += [{"name": f"worker-{i}", "role": "worker", "ip": f"192.168.56.{100 + i}"}
                     for i in range(1, workers + 1)]
    return raw


def measure(raw: dict) -> tuple[list[float], list[float]]:
    cold, warm = [], []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            raw = {**raw, "state_dir": tmp}
            cluster = parse_cluster(raw, source=DEFAULT_CLUSTER_FILE)
            t = time.perf_counter()
            ensure_pki(cluster)
            write_kubeconfigs(cluster)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            ensure_pki(cluster)
            write_kubeconfigs(cluster)
            warm.append(time.perf_counter() - t)
    return cold, warm


def main() -> None:
    print(f"PKI + kubeconfigs, median of {RUNS} runs (key type from cluster.yaml)")
    print(f"{'topology':28} {'from nothing':>14} {'rerun (no-op)':>14}")
    for label, masters, workers in (("default (2 masters, 2 workers)", 2, 2),
                                    ("3 masters, 20 workers", 3, 20)):
        raw = (yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()) if masters == 2 and workers == 2
               else topology(masters, workers))
        cold, warm = measure(raw)
        print(f"{label:28} {statistics.median(cold):13.3f}s {statistics.median(warm):13.3f}s")


if __name__ == "__main__":
    main()
