"""Plan tests run the real deploy.py through pyinfra's CLI against @fake hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kthw.model import REPO_ROOT
from tests.conftest import cluster_file

SECRET_MARKERS = ("PRIVATE KEY", "client-key-data")


def run_pyinfra(cluster: Path, *args: str, state: str = "fresh", check: bool = True, env: dict | None = None,
                deploy: str = "deploy.py") -> subprocess.CompletedProcess:
    env = {**os.environ, "KTHW_CLUSTER": str(cluster), "KTHW_FAKE_STATE": state, "PYINFRA_FAKE_DELAY": "0",
           **(env or {})}
    out = subprocess.run(
        [sys.executable, "-m", "pyinfra", "tests/plan/fake_inventory.py", deploy, *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"pyinfra failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def plan(cluster: Path, state: str = "fresh") -> dict[str, dict]:
    out = run_pyinfra(cluster, "--dry", "--json", state=state)
    return {p["name"]: p for p in json.loads(out.stdout)["plan"]}


@pytest.fixture(scope="session")
def default_cluster(tmp_path_factory) -> Path:
    return cluster_file(tmp_path_factory.mktemp("default"))
