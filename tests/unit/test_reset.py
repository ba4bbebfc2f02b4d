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
    # the scheduled snapshots: the timer stopped first, then its units, script, snapshots and systemd's stamp
    assert master.index("kthw-etcd-snapshot.timer kthw-etcd-snapshot ") < master.index("etcd ")
    for path in ("/var/lib/etcd-snapshots", "/usr/local/sbin/kthw-etcd-snapshot",
                 "/etc/systemd/system/kthw-etcd-snapshot.timer", "/etc/systemd/system/kthw-etcd-snapshot.service",
                 "/var/lib/systemd/timers/stamp-kthw-etcd-snapshot.timer"):
        assert path in master and path not in worker and path not in lb, path
    assert "etcd" not in worker.replace("/etc/", "") and "/usr/local/bin/kube-apiserver" not in worker
    assert "/usr/local/sbin/runc" in worker and "/opt/cni" in worker and "/var/lib/weave" in worker
    assert "haproxy" in lb and "/usr/local/bin" not in lb and "crictl" not in lb
    # the kubelet stops before the pods are removed, and the pods go before the runtime stops
    assert worker.index("systemctl stop kubelet") < worker.index("rmp -af") < worker.index("systemctl disable --now")
    assert worker.index("umount") < worker.index("rm -rf")
    assert "iptables-restore" not in lb and "KUBE-|WEAVE|CNI-|kthw-pod-network" in worker


def test_an_etcd_only_member_loses_etcd_and_nothing_of_a_node(tmp_path):
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    raw["nodes"][0]["etcd"] = True
    c = make_cluster(raw, tmp_path)
    lb = reset_script(c, c.node("loadbalancer"))
    subprocess.run(["sh", "-n", "-c", lb], check=True)
    assert "/var/lib/etcd " in lb and "/usr/local/bin/etcd" in lb and "haproxy" in lb
    assert "kubelet" not in lb and "kube-apiserver" not in lb


def placed_and_removed(tmp_path) -> tuple[dict, dict]:
    """{node: every path the deploy places there} and {node: what reset removes there}, for the
    reference cluster with Weave Net, with the bridge CNI and offline images, with an etcd-only
    member on the load balancer, and with two load balancers sharing a virtual IP."""
    from kthw.context import NEUTRAL_FACTS, HostContext, prepared_cluster
    from kthw.reset import removed_paths
    from operations.plan import collect
    from tests.conftest import cluster_file

    placed, removed = {}, {}
    for variant in ("weave", "bridge", "witness", "vip"):
        raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
        raw["cni"] = "bridge" if variant == "bridge" else "weave"
        raw["nodes"][0]["etcd"] = variant == "witness"
        if variant == "vip":
            raw["nodes"].insert(1, {"name": "loadbalancer-2", "role": "loadbalancer", "ip": "192.168.56.31"})
            raw["network"]["api_vip"] = "192.168.56.40"
        path = cluster_file(tmp_path / variant, raw)
        if variant == "bridge":  # offline image archives too
            images = tmp_path / "images"
            images.mkdir()
            (images / "pause.tar").write_bytes(b"x")
            raw = yaml.safe_load(path.read_text())
            raw["artifacts"]["images"] = str(images)
            path.write_text(yaml.safe_dump(raw))
        cluster = prepared_cluster(str(path))
        for node in cluster.nodes:
            wants = collect(HostContext(cluster, node, dict(NEUTRAL_FACTS)))
            files = [f.dest for w in wants.values() for f in w.all_files()]
            placed.setdefault(node.role, set()).update(files + [d.path for w in wants.values() for d in w.dirs])
            removed.setdefault(node.role, set()).update(removed_paths(node, "vagrant"))
    return placed, removed


def covered(path: str, removed: set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in removed)


def test_reset_removes_exactly_what_the_components_place(tmp_path):
    # derived from the records (kthw/components.py) and from what the deploy really places
    # (every component's wants), not from substrings of the script
    from kthw import components

    placed, removed = placed_and_removed(tmp_path)
    kept = {p for c in components.ALL for p in c.kept}
    for role in placed:
        left = sorted(p for p in placed[role] - kept if not covered(p, removed[role]))
        assert left == [], (role, left)  # everything the deploy places goes...
    everywhere = set().union(*placed.values())
    data = {p for c in components.ALL for p in c.data}
    for role in removed:
        extra = sorted(r for r in removed[role] - data
                       if not r.startswith("~") and not any(covered(p, {r}) for p in everywhere))
        assert extra == [], (role, extra)  # ...and reset removes nothing else but declared data
    assert "~vagrant/.kthw-upload" in removed["worker"]
    assert not kept & set().union(*removed.values())  # the hostname and /etc/hosts stay
