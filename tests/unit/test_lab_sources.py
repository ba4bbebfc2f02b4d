"""The lab's Weave build refuses a missing or altered source archive, naming the file."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from kthw.model import REPO_ROOT

SHARED = REPO_ROOT.parent / "shared" / "sources"


def build_weave(tmp_path, sources) -> subprocess.CompletedProcess:
    env = {**os.environ, "KTHW_SOURCES": str(sources), "KTHW_ARTIFACTS_OUT": str(tmp_path / "out"),
           "KTHW_ARTIFACTS_WORK": str(tmp_path / "work")}
    return subprocess.run([str(REPO_ROOT / "lab/artifacts/build"), "weave"], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(not shutil.which("go"), reason="lab/artifacts/build needs Go (scripts/setup --lab)")
def test_a_missing_archive_is_named(tmp_path):
    (tmp_path / "sources").mkdir()
    out = build_weave(tmp_path, tmp_path / "sources")
    assert out.returncode != 0
    assert f"source archive {tmp_path}/sources/weave-v2.8.1.tar.gz is missing" in out.stderr


@pytest.mark.skipif(not shutil.which("go"), reason="lab/artifacts/build needs Go (scripts/setup --lab)")
@pytest.mark.skipif(not (SHARED / "SHA256SUMS").exists(), reason="no shared/sources beside the checkout")
def test_an_altered_archive_is_refused(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    shutil.copy(SHARED / "SHA256SUMS", sources / "SHA256SUMS")
    (sources / "weave-v2.8.1.tar.gz").write_bytes(b"not the archive")
    out = build_weave(tmp_path, sources)
    assert out.returncode != 0
    assert f"{sources}/weave-v2.8.1.tar.gz does not match {sources}/SHA256SUMS" in out.stderr
