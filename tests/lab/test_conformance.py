"""Kubernetes' own conformance tests judge the deploy: the fixed CI subset (lab/conformance,
SUBSETS["ci"]: API and aggregation layer, webhooks, RBAC and service accounts, Services and
NodePort, DNS, pods, exec and logs, Deployments, Secrets and ConfigMaps, kubectl) on the
reference topology. The whole suite is `make conformance` (hours; docs/conformance.md)."""

from __future__ import annotations

import json

import pytest

from kthw.model import DEFAULT_CLUSTER_FILE
from tests.lab.lab import REPO_ROOT, sh


def test_the_conformance_ci_subset_passes(lab):
    if lab.source != DEFAULT_CLUSTER_FILE:
        pytest.skip("runs once, on the reference topology (the one `make conformance` judges)")
    out = REPO_ROOT / ".kthw" / "conformance" / "ci"
    run = sh(["lab/conformance", "--subset", "ci", "--out", str(out)], env=lab.env, check=False, timeout=3600)
    print(run.stdout[-3000:], run.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    lab.timings["conformance CI subset"] = summary["duration_seconds"]
    assert summary["failed_tests"] == [], f"see {out}/e2e.log"
    # every selected test ran and passed: none skipped by the suite, none left out
    assert summary["passed"] == summary["selected"] == 18, summary
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(autouse=True)
def quiet_afterwards(lab):
    """The suite deletes its namespaces as it ends; the tests after this one start on a quiet
    cluster (their node scans would otherwise see the kubelets clean up pods)."""
    yield
    builtin = {"default", "kube-system", "kube-public", "kube-node-lease"}

    def quiet():
        names = lab.kubectl("get", "namespaces", "-o", "jsonpath={.items[*].metadata.name}").split()
        return [n for n in names if n not in builtin] == [] or None
    lab.wait("the conformance tests' namespaces to be gone", quiet, timeout=600, interval=5)
