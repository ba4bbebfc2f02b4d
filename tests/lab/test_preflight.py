"""Every playbook gets the deploy's checks before it touches a host (kthw/preflight.py), on real
nodes (issue #19, findings 1-3): each refusal below leaves every service running as it was."""

from __future__ import annotations

import sys

from kthw.backup import available
from tests.lab.lab import Lab, reference_only, sh
from tests.lab.test_cluster import masters

UNITS = "etcd kube-apiserver kubelet containerd"


def started(lab: Lab) -> dict[str, str]:
    """{node: when each of its services last started}: a refusal must leave them all alone."""
    show = f"for u in {UNITS}; do systemctl show -p ExecMainStartTimestamp --value $u; done"
    return {n.name: lab.script(n.name, show) for n in lab.cluster.nodes if n.runs_kubelet}


def refused(lab: Lab, deploy: str, *args: str, env: dict | None = None) -> str:
    out = sh([sys.executable, "-m", "pyinfra", "-y", "inventory.py", deploy, *args],
             env={**lab.env, **(env or {})}, check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "Starting operation" not in text, text[-3000:]
    return text


def test_the_playbooks_refuse_what_would_break_the_cluster(lab, tmp_path):
    reference_only(lab)
    sh([sys.executable, "-m", "pyinfra", "-y", "inventory.py", "backup.py"], env=lab.env)
    snapshot = str(available(lab.cluster)[-1])
    pki = {p.name: p.read_bytes() for p in lab.cluster.pki_dir.glob("*") if p.is_file()}
    before = started(lab)

    # 1. a restore that leaves a master out (its etcd alone would never reach quorum)
    text = refused(lab, "restore.py", "--exclude", "master-2", "--data", f"snapshot={snapshot}")
    assert "restores every etcd member" in text and "master-2 is not in this run" in text

    # 2. the hosts of "another" cluster: this operator state holds another identity (a mixed-up
    #    state dir or KTHW_CLUSTER), and reset.py would delete the running cluster's etcd data
    other = {"KTHW_STATE_DIR": str(tmp_path / "other")}
    text = refused(lab, "reset.py", env=other)
    assert "holds no PKI to tell whether it is this one" in text
    sh([sys.executable, "-m", "kthw", "pki", "-q"], env={**lab.env, **other})
    for deploy in ("reset.py", "backup.py"):
        text = refused(lab, deploy, env=other)
        assert "holds another cluster identity" in text and "/var/lib/kubernetes/pki/ca.crt" in text, deploy

    # 3. the local PKI moved aside while only one worker is reset
    text = refused(lab, "reset.py", "--limit", "worker-2", "--data", "reset_local_state=yes")
    assert "moves the whole cluster's PKI and kubeconfigs aside" in text

    assert started(lab) == before  # nothing restarted, nothing stopped
    for m in masters(lab):
        lab.script(m, "test -d /var/lib/etcd/member")
    assert {p.name: p.read_bytes() for p in lab.cluster.pki_dir.glob("*") if p.is_file()} == pki
    assert lab.kubectl("get", "nodes", "-o", "name").count("node/") == len(lab.cluster.kubelet_nodes)
