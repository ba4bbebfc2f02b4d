"""kthw's operations used outside deploy.py: the example in docs/deploy.md and every operation called
without name= on a secret, on pyinfra's @fake connector."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kthw.model import REPO_ROOT
from kthw.ops import ManagedFile, Snapshot, SnapshotError

SECRET = "kthw-test-SECRET-b0a7c4d1e9f2"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(deploy: str, *args: str) -> str:
    env = {**os.environ, "KTHW_TEST_SECRET": SECRET, "PYINFRA_FAKE_DELAY": "0"}
    out = subprocess.run([sys.executable, "-m", "pyinfra", "tests/plan/ops_inventory.py", deploy, *args],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return ANSI.sub("", out.stdout + out.stderr)


def test_the_readme_example_plans_its_changes_and_hides_the_secret():
    text = run("examples/own_deploy.py", "--dry", "--diff")
    assert "Will create /etc/myapp/config.ini" in text and "+ port = 8080" in text
    assert "Will create /etc/myapp/token" in text and "(secret, content not shown)" in text
    assert "myapp | running" in text
    assert SECRET not in text


@pytest.mark.parametrize("mode", [("--dry", "--diff"), ("-y", "-vv")])
def test_no_operation_label_or_output_carries_a_secret(mode):
    text = run("tests/plan/unnamed_ops.py", *mode)
    # unnamed: pyinfra labels them with their arguments...
    assert "ops.files_synced ([ManagedFile(/etc/kthw-test/secret.key, secret, sha256=" in text
    for op in ("directories_present", "service_running", "service_restarted_in_turn", "command_when"):
        assert f"ops.{op} (" in text
    # ...and none of those labels, nor anything else printed, holds the secret
    assert SECRET not in text


def test_uploads_go_through_the_callers_temp_dir_emptied_before_and_after():
    # emptied after: a secret's copy does not stay in the SSH user's folder; before: what a failed
    # step left there goes with the next upload (issue #19, finding 9)
    text = run("tests/plan/unnamed_ops.py", "-y", "-vv")
    folder = "/var/tmp/kthw-test-uploads/.kthw-upload"
    assert f"rm -rf {folder} && mkdir -m 700 {folder}" in text
    assert text.index(f"mkdir -m 700 {folder}") < text.rindex(f"rm -rf {folder}\n")


def test_an_upload_is_two_commands_and_the_new_file_is_0600_before_its_bytes():
    # one command as the SSH user (the private folder), the SFTP upload into it, one command as
    # root that places the file and removes the folder: not pyinfra's cp and rm per file
    text = run("tests/plan/unnamed_ops.py", "-y", "-vv")
    op = text.split("--> Starting operation: ops.files_synced", 1)[1].split("--> Starting operation:", 1)[0]
    commands = re.findall(r"^\[@fake/node\] >>> (.*)$", op, re.M)
    assert len(commands) == 2, commands
    new = "/etc/kthw-test/secret.key.kthw-new"
    assert f"install -m 600 /dev/null {new} && cat /var/tmp/kthw-test-uploads/.kthw-upload/" in op
    assert op.index(f"install -m 600 /dev/null {new}") < op.index(f"mv -f {new} /etc/kthw-test/secret.key")


def test_managed_file_repr_names_the_file_never_its_bytes():
    f = ManagedFile.text("/etc/x.key", SECRET, mode=0o600, secret=True)
    for text in (repr(f), str(f), str([f]), repr({"files": [f]})):
        assert SECRET not in text and "/etc/x.key" in text


def test_snapshot_lookups_outside_the_spec_name_what_is_missing():
    snap = Snapshot({"files": {"/etc/a": None}, "dirs": {}, "services": {}, "sysctls": {}, "packages": {},
                     "manifests": {}, "images": []}, {"files": ["/etc/a"]})
    assert snap.file("/etc/a") is None  # asked for, and absent
    for lookup, key in ((snap.file, "/etc/b"), (snap.directory, "/etc"), (snap.service, "etcd"),
                        (snap.sysctl, "net.ipv4.ip_forward"), (snap.package, "socat"),
                        (snap.manifest_present, "/etc/kubernetes/addons/x.yaml"), (snap.image_present, "pause")):
        with pytest.raises(SnapshotError, match=re.escape(repr(key))):
            lookup(key)
