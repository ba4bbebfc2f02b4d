"""reset.py's per-machine script (kthw/reset.py): what goes, in which order, valid shell."""

from __future__ import annotations

import subprocess

import yaml

from kthw.model import DEFAULT_CLUSTER_FILE
from kthw.reset import reset_script
from tests.conftest import make_cluster


def script(tmp_path, name: str) -> str:
    c = make_cluster(yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()), tmp_path)
    return reset_script(c, c.node(name))


def test_each_role_loses_what_the_deploy_gave_it(tmp_path):
    master, worker, lb = (script(tmp_path, n) for n in ("master-1", "worker-1", "loadbalancer"))
    for text in (master, worker, lb):
        subprocess.run(["sh", "-n", "-c", text], check=True)  # valid POSIX shell
        assert "/var/lib/kthw" in text
    assert "etcd" in master and "/var/lib/etcd " in master and "/usr/local/bin/kube-apiserver" in master
    assert "/usr/local/bin/kubelet" in master  # masters are nodes too
    assert "etcd" not in worker.replace("/etc/", "") and "/usr/local/bin/kube-apiserver" not in worker
    assert "/usr/local/sbin/runc" in worker and "/opt/cni" in worker and "/var/lib/weave" in worker
    assert "haproxy" in lb and "/usr/local/bin" not in lb and "crictl" not in lb
    # the kubelet stops before the pods are removed, and the pods go before the runtime stops
    assert worker.index("systemctl stop kubelet") < worker.index("rmp -af") < worker.index("systemctl disable --now")
    assert worker.index("umount") < worker.index("rm -rf")
    assert "iptables-restore" not in lb and "KUBE-|WEAVE|CNI-|kthw-pod-network" in worker
