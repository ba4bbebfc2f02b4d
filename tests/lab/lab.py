"""Driving the LXC lab from tests: bring a topology up, deploy it, talk to it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kthw.model import REPO_ROOT, Cluster, load_cluster
from lab.cluster import lab_cluster_yaml

LAB_DIR = Path(os.environ.get("KTHW_LAB_DIR", Path.home() / ".cache" / "kthw" / "lab"))
SCAN_TREE = (Path(__file__).parent / "scan_tree.py").read_text()
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Vagrant as lab/up runs it (lab/lib.sh).
VAGRANT_ENV = {"VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DEFAULT_PROVIDER": "lxc"}
# Where a deploy writes: the file trees every node's state is compared over.
ROOTS = ["/etc", "/var/lib", "/usr/local", "/opt"]
# What the running cluster itself writes all the time (its data, not the deploy's): left out
# when comparing a running node's trees. Everything else must hold still.
# (Prefixes: a folder's own entry is skipped too; its mtime changes whenever a pod comes or goes.)
RUNTIME_STATE = [
    "/var/lib/etcd", "/var/lib/containerd", "/var/lib/cni", "/var/lib/kubelet/pods",
    "/var/lib/kubelet/plugins", "/var/lib/kubelet/pod-resources", "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet/checkpoints", "/var/lib/kubelet/cpu_manager_state",
    "/var/lib/kubelet/memory_manager_state", "/var/lib/kubelet/dra_manager_state",
    "/var/lib/kubelet/actuated_pods_state", "/var/lib/kubelet/allocated_pods_state",
    "/var/lib/weave", "/var/lib/dhcp", "/var/lib/haproxy",
]
# Written by Weave Net's init container (the CNI plugin and its config), not by the deploy.
RUNTIME_STATE += ["/etc/cni/net.d/10-weave.conflist", "/opt/cni/bin/weave-"]
# The kubelet's own atomic writes (a temporary ".<digits>" file beside a checkpoint it replaces).
RUNTIME_STATE += ["/var/lib/kubelet/."]
# The kubelet's record of each image it pulled (images come through the lab registry, pulled as
# pods need them, not imported by the deploy).
RUNTIME_STATE += ["/var/lib/kubelet/image_manager"]
# The masters' scheduled etcd snapshots, and systemd's record of their timer's last run (made
# when the timer first starts): the timer's doing, not the deploy's.
RUNTIME_STATE += ["/var/lib/etcd-snapshots", "/var/lib/systemd/timers/stamp-kthw-etcd-snapshot.timer"]
# apt's daily timers (masked in the lab's box since 2026-12-07; a machine of an older box ran them).
RUNTIME_STATE += ["/var/lib/apt/daily_lock", "/var/lib/apt/periodic", "/var/lib/apt/lists"]
# The deploy's own bookkeeping on a node (hashes of the files it placed), not a managed file.
BOOKKEEPING = ["/var/lib/kthw/hash-cache.json", "/var/lib/kthw/applied"]  # (and when it last restarted what)
# Directories the kubelet writes into directly (its checkpoints, replaced by rename as it admits
# pods): their mtime is the kubelet's, whenever it runs; what is inside is still compared entry by entry.
RUNTIME_DIR_MTIMES = ("/var/lib/kubelet",)


def tree_changes(before: dict[str, list], after: dict[str, list], ignore: list[str] = (),
                 files_only: bool = False, with_mtime: bool = True) -> dict[str, str]:
    """{path: what changed} between two scans of one node: "new", "gone", or the fields."""
    ignore = tuple(ignore)
    width = 5 if with_mtime else 4
    out = {}
    for path in sorted(set(before) | set(after)):
        if path.startswith(ignore):
            continue
        old, new = before.get(path), after.get(path)
        if files_only and "file" not in ((old or [""])[0], (new or [""])[0]):
            continue
        if old is None:
            out[path] = "new"
        elif new is None:
            out[path] = "gone"
        else:
            w = 4 if path in RUNTIME_DIR_MTIMES else width
            names = ["kind", "content", "mode", "owner", "mtime"][:w]
            if fields := [n for n, a, b in zip(names, old[:w], new[:w], strict=True) if a != b]:
                out[path] = ", ".join(fields)
    return out


def sh(cmd: list[str] | str, env: dict | None = None, timeout: int = 1800, check: bool = True,
       **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                         text=True, timeout=timeout, shell=isinstance(cmd, str), **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}")
    return out


@dataclass
class Lab:
    """One deployed topology of the lab."""

    source: Path  # the cluster file the lab copy was made from
    images: str = "registry"  # where the nodes get images: lab/registry, or "archives" (lab/cluster.py)
    cluster_file: Path = field(init=False)
    cluster: Cluster = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)
    record: dict = field(default_factory=dict)  # what the fixture saw on the way (scans, listings)

    def __post_init__(self):
        text, _ = lab_cluster_yaml(self.source, images=self.images)
        out = REPO_ROOT / ".kthw" / "lab" / f"{self.source.stem}.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        self.cluster_file = out
        self.cluster = load_cluster(out)

    @property
    def env(self) -> dict:
        return {"KTHW_CLUSTER": str(self.cluster_file)}

    def timed(self, label: str, cmd, **kw) -> subprocess.CompletedProcess:
        start = time.monotonic()
        out = sh(cmd, env=self.env, **kw)
        self.timings[label] = time.monotonic() - start
        return out

    def up(self) -> None:
        self.timed("lab up", ["lab/up"])

    def down(self, check: bool = True) -> None:
        sh(["lab/down"], env=self.env, check=check)

    def deploy(self, *args: str, label: str = "deploy") -> subprocess.CompletedProcess:
        return self.timed(label, [sys.executable, "-m", "pyinfra", "-y", "inventory.py", "deploy.py", *args])

    def dry_run_listing(self, label: str = "dry run with diff") -> tuple[dict[str, set[str]], str]:
        """({node: paths}, output) from the "Will create/modify/change <path>" lines of --dry --diff."""
        out = self.timed(label, [sys.executable, "-m", "pyinfra", "inventory.py", "deploy.py", "--dry", "--diff"])
        text = ANSI.sub("", out.stdout + out.stderr)
        listed: dict[str, set[str]] = {n.name: set() for n in self.cluster.nodes}
        for node, path in re.findall(r"\[([\w-]+)\]\s+Will (?:create|modify|change) (\S+)", text):
            listed[node].add(path)
        return listed, text

    def scan(self, roots: list[str], skip: list[str] = ()) -> dict[str, dict[str, list]]:
        """{node: {path: [kind, sha256/target, mode, uid:gid, mtime_ns]}} for every node, read in
        parallel (tests/lab/scan_tree.py)."""
        req = json.dumps({"roots": roots, "skip": list(skip)})

        def one(node: str) -> dict:
            out = sh(["ssh", "-F", str(LAB_DIR / "ssh-config"), "-o", "BatchMode=yes", node,
                      f"sudo python3 - {shlex.quote(req)}"], input=SCAN_TREE, timeout=300)
            return json.loads(out.stdout)

        names = [n.name for n in self.cluster.nodes]
        with ThreadPoolExecutor(len(names)) as pool:
            return dict(zip(names, pool.map(one, names), strict=True))

    def served_through_load_balancer(self) -> None:
        """The API answers through HAProxy. With one master, a deploy that restarted its apiserver
        ends when that apiserver is ready; HAProxy's health check takes it back seconds later."""
        if len(self.cluster.masters) > 1:  # another apiserver served all along
            assert self.kubectl("get", "--raw", "/readyz") == "ok"
            return
        self.wait("the load balancer to serve again",
                  lambda: self.kubectl("get", "--raw", "/readyz", check=False) == "ok", timeout=60, interval=2)

    def refresh_ssh_config(self, node: str, cluster_file: Path | None = None) -> None:
        """After a machine restarted outside `lab/up` its management address changed: rewrite the
        ssh-config lab/up wrote (for ``cluster_file``'s machines, default the lab's), once the
        machine answers again."""
        env = {"KTHW_CLUSTER": str(cluster_file)} if cluster_file else self.env

        def answers() -> bool:
            out = sh(["vagrant", "ssh-config"], env={**env, **VAGRANT_ENV}, check=False)
            if out.returncode != 0:
                return False
            (LAB_DIR / "ssh-config").write_text(out.stdout)
            return sh(["ssh", "-F", str(LAB_DIR / "ssh-config"), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                       node, "true"], check=False).returncode == 0

        self.wait(f"{node} to answer SSH again", answers, timeout=180)

    def inventory_source(self) -> str:
        """How `import inventory` got the machines this time: "from cache" or "vagrant ssh-config
        (<reason>)" (KTHW_INVENTORY_DEBUG's line)."""
        out = sh([sys.executable, "-c", "import inventory"], env={**self.env, "KTHW_INVENTORY_DEBUG": "1"})
        line = [ln for ln in out.stderr.splitlines() if ln.startswith("inventory: ")]
        assert len(line) == 1, out.stderr
        return line[0].removeprefix("inventory: ")

    def plan(self) -> dict[str, dict]:
        out = self.timed("dry run", [sys.executable, "-m", "pyinfra", "inventory.py", "deploy.py",
                                     "--dry", "--json"])
        return {p["name"]: p for p in json.loads(out.stdout)["plan"]}

    @property
    def kubectl_binary(self) -> Path:
        c = self.cluster
        return Path(os.path.expanduser(c.artifacts.directory)) / (
            f"kubernetes/{c.versions.kubernetes}/bin/linux/amd64/kubectl")

    def kubectl(self, *args: str, check: bool = True, timeout: int = 120) -> str:
        kubeconfig = self.cluster.kubeconfig_dir / "admin.kubeconfig"
        out = sh([str(self.kubectl_binary), "--kubeconfig", str(kubeconfig), *args], check=check,
                 timeout=timeout)
        return out.stdout if check else out.stdout + out.stderr

    def ssh(self, node: str, command: str, check: bool = True, timeout: int = 120) -> str:
        out = sh(["ssh", "-F", str(LAB_DIR / "ssh-config"), "-o", "BatchMode=yes", node,
                  f"sudo sh -c {json.dumps(command)}"], check=check, timeout=timeout)
        return out.stdout

    def script(self, node: str, script: str, check: bool = True, timeout: int = 120) -> str:
        """Run a shell script as root on a node, quoted so that only the node's root shell
        expands it (``ssh`` joins its arguments into a line for the remote login shell; with
        :meth:`ssh` that shell already expands ``$var`` and ``$(...)``)."""
        out = sh(["ssh", "-F", str(LAB_DIR / "ssh-config"), "-o", "BatchMode=yes", node,
                  "sudo sh -c " + shlex.quote(script)], check=check, timeout=timeout)
        return out.stdout

    def settled_pod_restarts(self, timeout: float = 300, namespace: str = "kube-system") -> dict[str, dict]:
        """Once every pod of ``namespace`` ("" for all) runs with all its containers ready:
        {pod/container: why} of the containers that restarted on the way (restarts, how the
        last run ended and its last log lines: a failed test says why, not only that)."""
        where = ["-n", namespace] if namespace else ["-A"]

        def settled():
            pods = [p for p in json.loads(self.kubectl("get", "pods", *where, "-o", "json"))["items"]
                    if p["status"].get("phase") not in ("Succeeded", "Failed")]  # finished: nothing to wait for
            ready = pods and all(p["status"].get("phase") == "Running" and p["status"].get("containerStatuses")
                                 and all(c["ready"] for c in p["status"]["containerStatuses"]) for p in pods)
            return pods if ready else None
        return {f"{p['metadata']['name']}/{c['name']}": self._why_restarted(p, c)
                for p in self.wait(f"every pod ready ({' '.join(where)})", settled, timeout=timeout, interval=1)
                for c in p["status"]["containerStatuses"] if c["restartCount"]}

    def _why_restarted(self, pod: dict, container: dict) -> dict:
        ended = container.get("lastState", {}).get("terminated", {})
        log = self.kubectl("logs", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"],
                           "-c", container["name"], "--previous", "--tail", "6", check=False)
        return {"restarts": container["restartCount"], "node": pod["spec"].get("nodeName"),
                "ended": {k: ended.get(k) for k in ("exitCode", "reason", "startedAt", "finishedAt")},
                "log": log.strip().splitlines()}

    def wait(self, what: str, predicate, timeout: float = 300, interval: float = 3):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except AssertionError as exc:
                last = exc
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}; last: {str(last)[-3000:]}")


class Probe:
    """Requests made one round after the other, every ``interval`` s, in a thread, while the
    ``with`` block runs; each failure kept with its time. Subclasses say what a round is."""

    def __init__(self, interval: float):
        import threading

        self.interval = interval
        self.requests = 0
        self.failures: list[str] = []
        self.failed_at: list[float] = []  # time.monotonic() of each failure (when it was seen)
        self.ok_at: list[float] = []  # and of each success, where a subclass records them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def round(self, i: int) -> None:
        raise NotImplementedError

    def failed(self, what: str) -> None:
        self.failures.append(f"{time.strftime('%T')} {what}")
        self.failed_at.append(time.monotonic())

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            self.round(i)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


class RequestLoop(Probe):
    """Reads and writes through the load balancer, one after the other every ``interval`` s,
    each a fresh kubectl (a new connection, as most clients make), while the block runs::

        with RequestLoop(lab) as loop:
            lab.ssh("master-1", "systemctl restart kube-apiserver")
        assert loop.failures == []
    """

    def __init__(self, lab: Lab, interval: float = 0.5, name: str = "kthw-failover-probe"):
        super().__init__(interval)
        self.lab, self.name = lab, name

    def _one(self, *args: str) -> None:
        self.requests += 1
        kubeconfig = self.lab.cluster.kubeconfig_dir / "admin.kubeconfig"
        out = sh([str(self.lab.kubectl_binary), "--kubeconfig", str(kubeconfig), "--request-timeout=20s", *args],
                 check=False, timeout=60)
        if out.returncode != 0:
            self.failed(f"kubectl {' '.join(args)}: {out.stderr.strip()[-300:]}")
        else:
            self.ok_at.append(time.monotonic())

    def round(self, i: int) -> None:
        self._one("get", "nodes", "-o", "name")
        self._one("create", "configmap", f"{self.name}-{i}", "--from-literal=n=1")
        self._one("delete", "configmap", f"{self.name}-{i}", "--wait=false")


def reference_only(lab: Lab) -> None:
    """Skip on the other topologies: what the test checks is the deploy's logic, the same on
    any topology, and it costs minutes per run (CI runs all topologies in one budget)."""
    import pytest

    from kthw.model import DEFAULT_CLUSTER_FILE

    if lab.source.resolve() != DEFAULT_CLUSTER_FILE.resolve():
        pytest.skip("topology-independent deploy logic: run on the reference topology only")
