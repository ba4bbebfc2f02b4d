"""Driving the LXC lab from tests: bring a topology up, deploy it, talk to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kthw.model import REPO_ROOT, Cluster, load_cluster
from lab.cluster import lab_cluster_yaml

LAB_DIR = Path(os.environ.get("KTHW_LAB_DIR", Path.home() / ".cache" / "kthw" / "lab"))


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
    cluster_file: Path = field(init=False)
    cluster: Cluster = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        text, _ = lab_cluster_yaml(self.source)
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
