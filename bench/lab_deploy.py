"""Lab benchmark: what a deploy costs on real (LXC) nodes. Prints figures; asserts nothing.

    make bench-lab          (root; destroys and recreates the lab twice: 2 and 6 workers)
    python bench/lab_deploy.py 6   (one topology only)

For each topology: `vagrant up` (lab/up) time, cold deploy time until every node is Ready,
dry-run time, no-op rerun time and its count of changed operations, the remote commands
each host received during the no-op rerun, and the operator's CPU seconds for it. The no-op
rerun and the dry run (median of 5 each, inventory from its cache) are split into phases
from pyinfra's own progress lines:

    start-up     python, pyinfra and config (until "Loading inventory")
    inventory    inventory.py: the model and the machines (cache, or Vagrant)
    connect      SSH connections to every host
    facts        the one HostState snapshot per host (KTHW_TIMINGS, slowest host)
    plan         the rest of deploy.py on every host (local: PKI check, templates, operations)
    operations   running the operations (nothing to do on a no-op), then disconnecting
"""

from __future__ import annotations

import copy
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kthw.model import DEFAULT_CLUSTER_FILE, load_cluster  # noqa: E402
from lab.cluster import lab_cluster_yaml  # noqa: E402

PYINFRA = [sys.executable, "-m", "pyinfra"]


def run(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, wall seconds, CPU seconds of the child processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, wall, cpu


PHASES = {  # phase -> the progress line that ends it
    "start-up": "--> Loading inventory",
    "inventory": "--> Connecting to hosts",
    "connect": "--> Preparing operation files",
    "facts+plan": ("--> Beginning operation run", "--> Detected changes", "--> Skipping change detection"),
    "operations": None,  # until the process exits
}


def phases(cmd: list[str], env: dict) -> dict[str, float]:
    """Wall seconds of each phase of one pyinfra run (lines time-stamped as they arrive)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env, "PYTHONUNBUFFERED": "1", "KTHW_TIMINGS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks: dict[str, float] = {}
    snapshot = 0.0
    lines = []
    for line in proc.stdout:
        now = time.monotonic() - start
        lines.append(line)
        for phase, ends in PHASES.items():
            if ends and phase not in marks and line.lstrip().startswith(ends):
                marks[phase] = now
        if m := re.search(r"kthw-timing \S+ snapshot ([\d.]+)", line):
            snapshot = max(snapshot, float(m.group(1)))
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(lines)[-4000:]}")
    marks["operations"] = time.monotonic() - start
    out, last = {}, 0.0
    for phase in PHASES:
        out[phase] = marks[phase] - last
        last = marks[phase]
    out["facts"], out["plan"] = snapshot, out.pop("facts+plan") - snapshot
    out["total"] = last
    return {k: out[k] for k in ("start-up", "inventory", "connect", "facts", "plan", "operations", "total")}


def median_phases(cmd: list[str], env: dict, runs: int = 5) -> dict[str, float]:
    samples = [phases(cmd, env) for _ in range(runs)]
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def topology(workers: int) -> Path:
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    keep = [n for n in raw["nodes"] if n["role"] != "worker"]
    template = next(n for n in raw["nodes"] if n["role"] == "worker")
    raw["nodes"] = keep + [{**copy.deepcopy(template), "name": f"worker-{i}", "ip": f"192.168.56.{20 + i}"}
                           for i in range(1, workers + 1)]
    src = REPO / ".kthw" / "bench" / f"workers-{workers}.yaml"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(yaml.safe_dump(raw, sort_keys=False))
    text, _ = lab_cluster_yaml(src)
    out = src.with_name(f"lab-workers-{workers}.yaml")
    out.write_text(text)
    return out


def wait_ready(cluster_file: Path, timeout: float = 600) -> float:
    cluster = load_cluster(cluster_file)
    kubectl = (Path(os.path.expanduser(cluster.artifacts.directory))
               / f"kubernetes/{cluster.versions.kubernetes}/bin/linux/amd64/kubectl")
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        out = subprocess.run([str(kubectl), "--kubeconfig", str(cluster.kubeconfig_dir / "admin.kubeconfig"),
                              "get", "nodes", "-o", "json"], capture_output=True, text=True)
        if out.returncode == 0:
            items = json.loads(out.stdout)["items"]
            ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True"
                                             for c in n["status"]["conditions"])]
            if len(ready) == len(cluster.workers):
                return time.monotonic() - start
        time.sleep(2)
    raise SystemExit("nodes did not become Ready")


def measure(workers: int) -> dict:
    path = topology(workers)
    env = {"KTHW_CLUSTER": str(path)}
    figures: dict = {}
    subprocess.run(["lab/down"], cwd=REPO, env={**os.environ, **env}, capture_output=True)
    _, figures["vagrant up (lab/up)"], _ = run(["lab/up"], env)
    _, deploy, _ = run([*PYINFRA, "-y", "inventory.py", "deploy.py"], env)
    figures["cold deploy to all-Ready"] = deploy + wait_ready(path)
    run([sys.executable, "-c", "import inventory"], env)  # the inventory cache, as after any run
    dry = median_phases([*PYINFRA, "inventory.py", "deploy.py", "--dry"], env)
    noop = median_phases([*PYINFRA, "-y", "inventory.py", "deploy.py"], env)
    figures["dry run"] = dry["total"]
    figures["no-op rerun"] = noop["total"]
    for phase in ("start-up", "inventory", "connect", "facts", "plan", "operations"):
        figures[f"  no-op: {phase}"] = noop[phase]
    for phase in ("inventory", "facts", "plan"):
        figures[f"  dry run: {phase}"] = dry[phase]
    env_nocache = {**env, "KTHW_INVENTORY_CACHE": "off"}
    figures["no-op rerun, inventory from Vagrant"] = median_phases(
        [*PYINFRA, "-y", "inventory.py", "deploy.py"], env_nocache, runs=3)["total"]
    out, wall, cpu = run([*PYINFRA, "-y", "-vv", "--json", "inventory.py", "deploy.py"], env)
    ops = json.loads(out.stdout)["results"]["operations"]
    figures["changed operations"] = sum(len(op["success"]) for op in ops)
    for op in ops:
        if op["success"]:
            print(f"  {workers} workers, no-op rerun changed: {op['name']} on {', '.join(op['success'])}",
                  file=sys.stderr)
    figures["operator CPU for the rerun"] = cpu
    per_host: dict[str, int] = {}
    for host in re.findall(r"^\s*\[([\w.-]+)\]\s+>>> ", out.stderr, re.M):
        per_host[host] = per_host.get(host, 0) + 1
    figures["remote commands per host"] = per_host
    subprocess.run(["lab/down"], cwd=REPO, env={**os.environ, **env}, capture_output=True)
    return figures


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [2, 6]
    results = {w: measure(w) for w in counts}
    print("lab benchmark (1 load balancer, 2 masters, 2 or 6 workers: LXC nodes sharing this machine's 2 cores;\n"
          "no-op rerun and dry run: median of 5)")
    print(f"{'':40}" + "".join(f"{f'{w + 3} nodes':>14}" for w in counts))
    for key in results[counts[0]]:
        cells = []
        for w in counts:
            v = results[w][key]
            if isinstance(v, dict):
                cells.append(f"{min(v.values())}-{max(v.values())}" if v else "-")
            elif isinstance(v, int):
                cells.append(str(v))
            else:
                cells.append(f"{v:.2f}s")
        print(f"{key:40}" + "".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
