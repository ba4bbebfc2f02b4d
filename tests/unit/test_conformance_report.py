"""lab/conformance's pure parts: the summary it makes of e2e.test's JUnit report, and its subsets."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_script():
    loader = importlib.machinery.SourceFileLoader("lab_conformance", str(REPO / "lab" / "conformance"))
    spec = importlib.util.spec_from_loader("lab_conformance", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" disabled="0" errors="0" failures="1" time="12.5">
  <testsuite name="Kubernetes e2e suite" tests="5" failures="1" errors="0" skipped="2">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed"/>
    <testcase name="[It] [sig-node] Pods should be submitted and removed [NodeConformance] [Conformance]"
              classname="Kubernetes e2e suite" status="passed" time="3.1"/>
    <testcase name="[It] [sig-network] DNS should provide DNS for services [Conformance]"
              classname="Kubernetes e2e suite" status="failed" time="8.0">
      <failure message="timed out" type="failed">timed out</failure>
    </testcase>
    <testcase name="[It] [sig-apps] Deployment should run the lifecycle of a Deployment [Conformance]"
              classname="Kubernetes e2e suite" status="skipped"><skipped message="skipped"/></testcase>
    <testcase name="[It] [sig-storage] CSI mock volume should work" classname="Kubernetes e2e suite"
              status="skipped"><skipped message="not focused"/></testcase>
  </testsuite>
</testsuites>
"""


def test_summary_counts_only_the_selected_tests(tmp_path):
    conformance = load_script()
    junit = tmp_path / "junit_01.xml"
    junit.write_text(JUNIT)
    got = conformance.summarize(junit, r"\[Conformance\]")
    # the unfocused CSI test is not counted as skipped; the suite set-up is not a test
    assert (got["passed"], got["failed"], got["skipped"]) == (1, 1, 1)
    assert got["failed_tests"] == ["[It] [sig-network] DNS should provide DNS for services [Conformance]"]


def test_every_ci_subset_entry_is_a_valid_distinct_pattern():
    conformance = load_script()
    patterns = conformance.SUBSETS["ci"]
    assert len(patterns) == len(set(patterns)) == 18
    for p in patterns:
        re.compile(p)
