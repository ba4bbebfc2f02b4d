"""Shared fixtures: cluster models built from the repository's cluster.yaml."""

from __future__ import annotations

import copy
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import yaml

from kthw.artifacts import CATALOGUE
from kthw.model import DEFAULT_CLUSTER_FILE, Cluster, parse_cluster

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def raw_cluster() -> dict:
    """A fresh, mutable copy of the shipped cluster.yaml."""
    return copy.deepcopy(_RAW)


_RAW = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())


def make_cluster(raw: dict, state_dir: Path) -> Cluster:
    raw = copy.deepcopy(raw)
    raw["state_dir"] = str(state_dir)
    return parse_cluster(raw, source=DEFAULT_CLUSTER_FILE)


def scaled(masters: int, workers: int, base: dict | None = None) -> dict:
    """The shipped model with another count of masters and workers."""
    raw = copy.deepcopy(base or _RAW)
    lb = next(n for n in raw["nodes"] if n["role"] == "loadbalancer")
    nodes = [lb]
    nodes += [{"name": f"master-{i}", "role": "master", "ip": f"192.168.56.{10 + i}", "cpus": 2,
               "memory": 2048} for i in range(1, masters + 1)]
    nodes += [{"name": f"worker-{i}", "role": "worker", "ip": f"192.168.56.{100 + i}", "cpus": 1,
               "memory": 1024} for i in range(1, workers + 1)]
    raw["nodes"] = nodes
    return raw


def make_fake_artifacts(root: Path, versions: dict) -> None:
    """Small stand-ins laid out like the real release files (plan tests never run them)."""
    sums = []
    for art in CATALOGUE:
        v = versions[art.component]
        rel = art.path(v)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            if art.installs[0][0] == "":
                path.write_bytes(f"#!/bin/sh\necho fake {art.name} {v}\n".encode())
            else:
                with tarfile.open(path, "w:gz") as tar:
                    for member, _ in art.installs:
                        name = member.format(v=v, n=v.lstrip("v"))
                        data = f"#!/bin/sh\necho fake {name} {v}\n".encode()  # differs per version
                        info = tarfile.TarInfo(name)
                        info.size, info.mode = len(data), 0o755
                        tar.addfile(info, io.BytesIO(data))
        sums.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}")
    (root / "SHA256SUMS").write_text("\n".join(sorted(set(sums))) + "\n")


def cluster_file(tmp: Path, raw: dict | None = None) -> Path:
    raw = copy.deepcopy(raw or yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()))
    art = tmp / "artifacts"
    make_fake_artifacts(art, raw["versions"])
    raw["artifacts"] = {"source": "directory", "directory": str(art), "cache_dir": str(tmp / "cache")}
    raw["state_dir"] = str(tmp / "state")
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
