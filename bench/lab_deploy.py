"""Lab benchmark: what a deploy costs on real LXC nodes as the cluster grows. Prints figures,
keeps them, asserts nothing.

    make bench-lab                    the reference (2 masters, 2 workers), 3+4 and 3+12
    python bench/lab_deploy.py 3+4    one topology (MASTERS+WORKERS; plus the load balancer)
    python bench/lab_deploy.py --cpu 2+2   also where the cold deploy's CPU went (bench/cpu_sampler.py)
    python bench/lab_deploy.py --cold 2+2  only the cold deploy and the wait until settled (to repeat it)
    python bench/plot_lab.py          docs/img/bench-lab.png from the kept figures

Each topology starts from nothing (lab/down, lab/up) and is torn down after. Every node is an
LXC container on this machine's cores, so wall time grows with the node count whatever the
deploy does. Measured:

    machines          lab/up: containers from the cached box until every node answers SSH
    cold deploy       pyinfra from fresh machines to its end, split by what the time went to:
                        start-up, inventory, connect, facts and plan (pyinfra's progress lines),
                        then each operation (the time from its start line to the next) by its
                        name: packages and binaries, images (offline archives copied and
                        imported: only with KTHW_LAB_IMAGES=archives), files and settings (certs,
                        configs, units, sysctls), services started, waits for health, add-ons
                        applied; the last one ends at pyinfra's "Results" line, and the end of
                        the run (results printed, every host disconnected) is a stage of its own
    settled           after the deploy, until every Node is Ready and CoreDNS answers a query
                        for kubernetes.default from a master (through the Service address); the
                        images the pods need are pulled from lab/registry in this time. Split by
                        the cluster's own records (settle: ...): the last Node registered and
                        Ready, CoreDNS's first pod scheduled and ready, each image's slowest pull
                        on any node with and without its wait in the kubelet's pull queue
    no-op rerun       median of 5 (inventory from its cache), split by phase; the dry run too
    one worker added  lab/up of one more machine, the deploy that joins it, until it is Ready;
                        then the deploy that takes it out of the file again
    per node          memory (RSS, and the working set: usage less inactive page cache) and
                        inotify instances, by role, read from the containers' cgroups

Results are appended to .kthw/bench/lab.json (one record per topology and run).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
import re
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

sys.path.insert(0, str(REPO / "bench"))
from cpu_sampler import CpuSampler  # noqa: E402

PYINFRA = [sys.executable, "-m", "pyinfra"]
DEPLOY = [*PYINFRA, "-y", "inventory.py", "deploy.py"]
RESULTS = REPO / ".kthw" / "bench" / "lab.json"
TOPOLOGIES = ("2+2", "3+4", "3+12")
CPU = False  # --cpu: sample where the cold deploy's CPU goes (costs the run a little of it)
COLD_ONLY = False  # --cold: the cold deploy and the wait until settled, nothing after (a repeat is quick)

PHASES = {  # phase of a pyinfra run -> the progress line that ends it
    "start-up": "--> Loading inventory",
    "inventory": "--> Connecting to hosts",
    "connect": "--> Preparing operation files",
    "facts+plan": ("--> Beginning operation run", "--> Detected changes", "--> Skipping change detection"),
    "operations": "--> Results:",
    "end of run": None,  # the results printed, every host disconnected: until the process exits
}
STAGES = (  # stage of a cold deploy -> words in an operation's name that put it there (first match)
    ("add-ons applied", ("addons |",)),
    ("waits for health", ("healthy", " ready (", "Ready")),
    ("services started", (" running", "joins the running")),
    ("packages and binaries", ("| packages", "binaries", "containerd, runc, CNI, crictl")),
    ("images copied and imported", ("image archives", "images imported")),
    ("barriers", ("--- barrier",)),
    ("files and settings (certs, configs, units, sysctls)", ("",)),
)
START_OP = re.compile(r"--> Starting operation: (.*?)\s*$")


# --------------------------------------------------------------------------- topologies
def topology(masters: int, workers: int, label: str) -> Path:
    """cluster.yaml with this many masters and workers (its own nodes first, same addresses),
    as the lab's copy (artifacts from the lab build)."""
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    lbs = [n for n in raw["nodes"] if n["role"] == "loadbalancer"]
    first = {r: [n for n in raw["nodes"] if n["role"] == r] for r in ("master", "worker")}
    ms = [first["master"][i] if i < len(first["master"]) else
          {**copy.deepcopy(first["master"][0]), "name": f"master-{i + 1}", "ip": f"192.168.56.{11 + i}"}
          for i in range(masters)]
    ws = [first["worker"][i] if i < len(first["worker"]) else
          {**copy.deepcopy(first["worker"][0]), "name": f"worker-{i + 1}", "ip": f"192.168.56.{101 + i}"}
          for i in range(workers)]
    raw["nodes"] = lbs + ms + ws
    src = REPO / ".kthw" / "bench" / f"{label}.yaml"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(yaml.safe_dump(raw, sort_keys=False))
    text, _ = lab_cluster_yaml(src)
    out = src.with_name(f"lab-{label}.yaml")
    out.write_text(text)
    return out


# --------------------------------------------------------------------------- running things
def sh(cmd: list[str], env: dict, timeout: float = 3600) -> float:
    """Run; wall seconds. Fails loudly."""
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.monotonic() - start


def timed_run(cmd: list[str], env: dict) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """One pyinfra run, its output time-stamped line by line: (phase seconds, [(operation, seconds)])."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env, "PYTHONUNBUFFERED": "1", "KTHW_TIMINGS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks: dict[str, float] = {}
    ops: list[tuple[str, float]] = []  # (name, start)
    snapshot, lines = 0.0, []
    for line in proc.stdout:
        now = time.monotonic() - start
        lines.append(line)
        for phase, ends in PHASES.items():
            if ends and phase not in marks and line.lstrip().startswith(ends):
                marks[phase] = now
        if m := START_OP.search(line):
            ops.append((m.group(1), now))
        if m := re.search(r"kthw-timing \S+ snapshot ([\d.]+)", line):
            snapshot = max(snapshot, float(m.group(1)))
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(lines)[-4000:]}")
    end = marks["end of run"] = time.monotonic() - start
    marks.setdefault("operations", end)
    out, last = {}, 0.0
    for phase in PHASES:
        out[phase] = marks[phase] - last
        last = marks[phase]
    out["facts"], out["plan"] = snapshot, out.pop("facts+plan") - snapshot
    out["total"] = end
    durations = [(name, (ops[i + 1][1] if i + 1 < len(ops) else marks["operations"]) - t)
                 for i, (name, t) in enumerate(ops)]
    return out, durations


def stage_of(operation: str) -> str:
    return next(stage for stage, words in STAGES if any(w in operation for w in words))


def median_phases(cmd: list[str], env: dict, runs: int = 5) -> dict[str, float]:
    samples = [timed_run(cmd, env)[0] for _ in range(runs)]
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


# --------------------------------------------------------------------------- the cluster
def kubectl(cluster_file: Path, *args: str) -> subprocess.CompletedProcess:
    c = load_cluster(cluster_file)
    build = Path(os.path.expanduser(c.artifacts.directory))
    binary = build / "kubernetes" / c.versions.kubernetes / "bin/linux/amd64/kubectl"
    return subprocess.run([str(binary), "--kubeconfig", str(c.kubeconfig_dir / "admin.kubeconfig"), *args],
                          capture_output=True, text=True, timeout=60)


def ready_nodes(cluster_file: Path) -> set[str]:
    out = kubectl(cluster_file, "get", "nodes", "-o", "json")
    if out.returncode != 0:
        return set()
    return {n["metadata"]["name"] for n in json.loads(out.stdout)["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])}


# A DNS query for kubernetes.default.svc.<domain> (type A) to the cluster DNS address, from a
# master (python3 is on every lab node): exits 0 on an answer with at least one record.
DNS_QUERY = r"""
import socket, struct, sys
qname = b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split(".")) + b"\0"
query = struct.pack(">HHHHHH", 0x6b74, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.sendto(query, (sys.argv[1], 53))
r = s.recv(512)
sys.exit(0 if r[:2] == query[:2] and r[3] & 0x0F == 0 and struct.unpack(">H", r[6:8])[0] > 0 else 1)
"""


def dns_answers(cluster_file: Path) -> bool:
    c = load_cluster(cluster_file)
    name = f"kubernetes.default.svc.{c.domain}"
    out = subprocess.run(["ssh", "-F", str(Path.home() / ".cache/kthw/lab/ssh-config"), "-o", "BatchMode=yes",
                          c.masters[0].name, f"python3 -c '{DNS_QUERY}' {c.cluster_dns} {name}"],
                         capture_output=True, text=True, timeout=30)
    return out.returncode == 0


def settle(cluster_file: Path, nodes: set[str], timeout: float = 900) -> float:
    """Seconds until every one of ``nodes`` is Ready and CoreDNS answers."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if nodes <= ready_nodes(cluster_file) and dns_answers(cluster_file):
            return time.monotonic() - start
        time.sleep(1)
    raise SystemExit(f"not settled after {timeout} s: Ready {sorted(ready_nodes(cluster_file))}")


PULLED = re.compile(r'Successfully pulled image "(?:[^"/]*/)*([^":]+)[^"]*" in (\S+) \((\S+) including waiting\)')


def go_seconds(text: str) -> float:
    """A Go duration as the kubelet prints it (1m2.5s, 3.2s, 870ms) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|µs|us|ns|h|m|s)", text))


def settle_split(cluster_file: Path, deploy_end: float) -> dict[str, float]:
    """What the time after the deploy went to, from the cluster's own records (whole seconds,
    as the API keeps them, after the deploy's end; negative: before it): the last Node Ready,
    the first CoreDNS pod scheduled and ready, and each image's slowest pull on any node with
    its longest wait in a kubelet's pull queue (the kubelet's "Pulled" events). The last Node
    registered too: its pods could not start before."""
    def after(stamp: str) -> float:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - deploy_end

    def when(obj: dict, condition: str) -> float | None:
        return next((after(c["lastTransitionTime"]) for c in obj["status"].get("conditions", [])
                     if c["type"] == condition and c["status"] == "True"), None)
    nodes = json.loads(kubectl(cluster_file, "get", "nodes", "-o", "json").stdout)["items"]
    pods = json.loads(kubectl(cluster_file, "-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns",
                              "-o", "json").stdout)["items"]
    split = {"settle: last Node registered": max(after(n["metadata"]["creationTimestamp"]) for n in nodes),
             "settle: last Node Ready": max(when(n, "Ready") for n in nodes),
             "settle: first CoreDNS pod scheduled": min(when(p, "PodScheduled") for p in pods),
             "settle: first CoreDNS pod ready": min(when(p, "Ready") or float("inf") for p in pods)}
    events = json.loads(kubectl(cluster_file, "-n", "kube-system", "get", "events", "--field-selector",
                                "reason=Pulled", "-o", "json").stdout)["items"]
    for image, took, waited in (m.groups() for e in events if (m := PULLED.search(e["message"]))):
        for key, value in ((f"settle: {image} pull (slowest)", go_seconds(took)),
                           (f"settle: {image} pull, with queue (slowest)", go_seconds(waited))):
            split[key] = max(split.get(key, 0.0), value)
    return split


def node_cost(name: str) -> tuple[float, float, int]:
    """(RSS MiB, working set MiB, inotify instances) of a lab node's container (cgroup v1 or v2)."""
    # The container's own cgroup, from its init's: LXC names a new one lxc.payload.kthw-NAME-1
    # (-2...) while an earlier container's is still being freed, so the name alone can read an
    # empty group.
    pid = subprocess.run(["lxc-info", "-n", f"kthw-{name}", "-pH"], capture_output=True, text=True).stdout.strip()
    if not pid:
        raise SystemExit(f"bench: lab node {name} is not running (lxc-info -n kthw-{name})")
    paths = dict(line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
    unified = Path("/sys/fs/cgroup/cgroup.controllers").exists()

    def group(controller: str) -> Path:
        path = paths[""] if unified else next(p for c, p in paths.items() if controller in c.split(","))
        parts = path.strip("/").split("/")  # the container's group, above the init.scope inside it
        mine = "/".join(parts[:next(i for i, p in enumerate(parts) if p.startswith("lxc.payload.")) + 1])
        return Path("/sys/fs/cgroup", mine) if unified else Path("/sys/fs/cgroup", controller, mine)
    mem = group("memory")
    stat = dict(line.split() for line in (mem / "memory.stat").read_text().splitlines())
    if (mem / "memory.current").exists():
        usage, rss, inactive = int((mem / "memory.current").read_text()), int(stat["anon"]), int(stat["inactive_file"])
    else:
        usage, rss = int((mem / "memory.usage_in_bytes").read_text()), int(stat["total_rss"])
        inactive = int(stat["total_inactive_file"])
    pids = {pid for procs in group("pids").rglob("cgroup.procs") for pid in procs.read_text().split()}
    inotify = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):  # gone meanwhile
                inotify += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
    return rss / 2**20, (usage - inactive) / 2**20, inotify


# --------------------------------------------------------------------------- one topology
def measure(label: str, r: dict) -> None:
    """Fills ``r`` as it goes (what was measured stays when a later step fails)."""
    masters, workers = (int(x) for x in label.split("+"))
    path = topology(masters, workers, label)
    cluster = load_cluster(path)
    grown = topology(masters, workers + 1, f"{label}-grown")
    env, grown_env = {"KTHW_CLUSTER": str(path)}, {"KTHW_CLUSTER": str(grown)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    r.update({"topology": label, "nodes": len(cluster.nodes), "cores": os.cpu_count(), "commit": commit.stdout.strip(),
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
              "images": os.environ.get("KTHW_LAB_IMAGES") or "registry"})  # lab/cluster.py
    subprocess.run(["lab/down"], cwd=REPO, env={**os.environ, **grown_env}, capture_output=True)
    r["machines"] = sh(["lab/up"], env)
    sampler = CpuSampler() if CPU else None
    if sampler:
        sampler.start()
    phases, ops = timed_run(DEPLOY, env)
    deploy_end = time.time()
    kube = {n.name for n in cluster.kubelet_nodes}
    r["settled"] = settle(path, kube)
    r.update(settle_split(path, deploy_end))
    if sampler:
        by_command, by_node, busy = sampler.stop()
        r["cpu: machine busy s"] = busy
        r["cpu by node"] = by_node.most_common()
        r["cpu by command"] = [(f"{role} {command}", s) for (role, command), s in by_command.most_common(15)]
    r["cold deploy"] = phases["total"]
    r["cold: start-up, inventory, connect"] = phases["start-up"] + phases["inventory"] + phases["connect"]
    r["cold: facts and plan"] = phases["facts"] + phases["plan"]
    for stage, _ in STAGES:
        r[f"cold: {stage}"] = sum(s for name, s in ops if stage_of(name) == stage)
    r["cold: end of run (results, disconnect)"] = phases["end of run"]
    r["slowest operations"] = sorted(ops, key=lambda o: -o[1])[:8]
    r["operations"] = ops  # every one, in the order they ran, for a closer look
    if COLD_ONLY:
        r["cold only"] = True
        subprocess.run(["lab/down"], cwd=REPO, env={**os.environ, **env}, capture_output=True)
        return
    sh([sys.executable, "-c", "import inventory"], env)  # the inventory cache, as after any run
    r["dry run"] = median_phases([*PYINFRA, "inventory.py", "deploy.py", "--dry"], env)["total"]
    noop = median_phases(DEPLOY, env)
    for phase in ("start-up", "inventory", "connect", "facts", "plan", "operations", "end of run", "total"):
        r[f"no-op: {phase}"] = noop[phase]
    costs = {n.name: node_cost(n.name) for n in cluster.nodes}
    for role in ("loadbalancer", "master", "worker"):
        mine = [costs[n.name] for n in cluster.nodes if n.role == role]
        r[f"per {role}: RSS MiB"] = statistics.median(c[0] for c in mine)
        r[f"per {role}: working set MiB"] = statistics.median(c[1] for c in mine)
        r[f"per {role}: inotify instances"] = max(c[2] for c in mine)
    new = next(n.name for n in load_cluster(grown).workers if n.name not in {w.name for w in cluster.workers})
    r["add a worker: machine"] = sh(["lab/up"], grown_env)
    r["add a worker: deploy"] = sh(DEPLOY, grown_env)
    r["add a worker: then Ready"] = settle(grown, {new})
    r["remove it: deploy"] = sh(DEPLOY, env)
    subprocess.run(["lab/down"], cwd=REPO, env={**os.environ, **grown_env}, capture_output=True)


def keep(record: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps([*kept, record], indent=1))


def show(results: list[dict]) -> None:
    print(f"lab benchmark, {results[0]['date'][:10]}, commit {results[0]['commit']}, {results[0]['cores']} cores, "
          f"images {results[0]['images']} (no-op rerun and dry run: median of 5)")
    heads = [f"{r['topology']} ({r['nodes']} nodes)" for r in results]
    print(f"{'':44}" + "".join(f"{h:>18}" for h in heads))
    for key in results[0]:
        if key in ("topology", "nodes", "date", "cores", "commit", "images", "slowest operations", "operations",
                   "failed", "cpu by node", "cpu by command", "cold only"):
            continue
        cells = [r[key] if isinstance(r.get(key), int) else f"{r[key]:.1f}" if key in r else "-" for r in results]
        print(f"{key:44}" + "".join(f"{c:>18}" for c in cells))
    for r in results:
        print(f"slowest operations of the cold deploy, {r['topology']}: "
              + "; ".join(f"{name} {s:.1f} s" for name, s in r["slowest operations"]))
        if "cpu by command" in r:
            print(f"CPU seconds of the cold deploy until settled, {r['topology']} (sampled; the machine: "
                  f"{r['cpu: machine busy s']:.0f} s): by node "
                  + ", ".join(f"{n} {s:.1f}" for n, s in r["cpu by node"]) + "; by process "
                  + ", ".join(f"{c} {s:.1f}" for c, s in r["cpu by command"]))


def main() -> None:
    global CPU, COLD_ONLY
    args = sys.argv[1:]
    CPU, COLD_ONLY = "--cpu" in args, "--cold" in args
    labels = [a for a in args if a not in ("--cpu", "--cold")] or list(TOPOLOGIES)
    for label in labels:
        if not re.fullmatch(r"[1-9]\d*\+[1-9]\d*", label):
            raise SystemExit(f"bench/lab_deploy.py: {label!r}: give topologies as MASTERS+WORKERS, e.g. 3+4")
    results = []
    for label in labels:
        r: dict = {}
        try:
            measure(label, r)
        except BaseException as exc:  # keep what was measured, marked, then stop
            r["failed"] = str(exc)[-2000:]
            raise
        finally:
            if "cold deploy" in r:
                keep(r)
        results.append(r)
        print(f"{label}: done ({r['cold deploy']:.1f} s cold deploy)", file=sys.stderr, flush=True)
    show(results)


if __name__ == "__main__":
    main()
