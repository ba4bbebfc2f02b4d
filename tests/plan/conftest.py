"""Plan tests run the real deploy.py through pyinfra's CLI against @fake hosts."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from kthw.artifacts import CATALOGUE
from kthw.model import DEFAULT_CLUSTER_FILE, REPO_ROOT

SECRET_MARKERS = ("PRIVATE KEY", "client-key-data")


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
                        data = f"#!/bin/sh\necho fake {member}\n".encode()
                        info = tarfile.TarInfo(member.format(v=v, n=v.lstrip("v")))
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


def run_pyinfra(cluster: Path, *args: str, state: str = "fresh", check: bool = True
                ) -> subprocess.CompletedProcess:
    env = {**os.environ, "KTHW_CLUSTER": str(cluster), "KTHW_FAKE_STATE": state, "PYINFRA_FAKE_DELAY": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "pyinfra", "tests/plan/fake_inventory.py", "deploy.py", *args],
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
