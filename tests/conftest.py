"""Shared fixtures: cluster models built from the repository's cluster.yaml."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

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
