"""The operator commands' SSH calls (pki adopt, certs, rotate-ca): what reaches ssh's command
line and the remote shell (issue #19, findings 8 and 9)."""

from __future__ import annotations

import subprocess

import pytest

import kthw.adopt
from kthw.adopt import ssh_fetch
from kthw.model import DEFAULT_CLUSTER_FILE, load_cluster
from kthw.ssh import as_root, ssh_argv


def test_the_destination_is_never_read_as_an_ssh_option():
    argv = ssh_argv({"ssh_hostname": "10.0.0.1", "ssh_user": "ubuntu", "ssh_port": 2222}, "true")
    assert argv[-3:] == ["--", "ubuntu@10.0.0.1", "true"]
    assert argv.index("--") > argv.index("-p")


@pytest.mark.parametrize("user, expected", [("root", "tar -cf - x"), ("vagrant", "sudo -n tar -cf - x")])
def test_sudo_only_when_the_user_is_not_root(user, expected):
    assert as_root({"ssh_user": user}, "tar -cf - x") == expected


@pytest.fixture
def local_ssh(monkeypatch):
    """ssh_run that runs the remote command here (as this user, through sh), recording it."""
    sent = []

    def run(name, connection, remote, timeout=120):
        sent.append(remote)
        if remote.startswith("sudo -n "):
            remote = remote.removeprefix("sudo -n ")
        out = subprocess.run(["sh", "-c", remote], capture_output=True, timeout=timeout)
        if out.returncode:
            raise kthw.adopt.SshError(f"{name}: {out.stderr.decode()[-500:]}")
        return out.stdout
    monkeypatch.setattr(kthw.adopt, "ssh_run", run)
    return sent


def test_a_file_the_master_lacks_is_named_not_a_raw_tar_error(tmp_path, local_ssh):
    # before: `tar: Cannot stat` ended the fetch, and adopt's own message was never reached
    (tmp_path / "present.crt").write_text("x")
    master = load_cluster(DEFAULT_CLUSTER_FILE).masters[0]
    got = ssh_fetch("master-1", {"ssh_user": "root"})(master, [str(tmp_path / "present.crt"),
                                                            str(tmp_path / "absent.key")])
    assert got == {str(tmp_path / "present.crt"): b"x"}
    assert not local_ssh[0].startswith("sudo")


def test_adopt_names_what_the_master_lacks(local_ssh):
    # the real tar, run here: this operator machine holds none of a master's identity files
    cluster = load_cluster(DEFAULT_CLUSTER_FILE)
    with pytest.raises(kthw.adopt.PkiError, match="master-1 lacks /var/lib/kubernetes/pki/ca.crt"):
        kthw.adopt.adopt(cluster, ssh_fetch("master-1", {"ssh_user": "vagrant"}))
    assert local_ssh[0].startswith("sudo -n ")
