"""Plan tests for the day-two deploy files (backup.py, restore.py) on @fake hosts."""

from __future__ import annotations

import json
import os

from kthw.artifacts import sha256_file
from kthw.backup import new_backup, record
from kthw.model import load_cluster
from kthw.pki import ensure_pki
from tests.plan.conftest import SECRET_MARKERS, run_pyinfra


def changed_hosts(out) -> dict[str, list[str]]:
    return {p["name"]: p["hosts_with_change"] for p in json.loads(out.stdout)["plan"] if p["hosts_with_change"]}


def test_a_backup_runs_on_one_master_only(default_cluster):
    ops = changed_hosts(run_pyinfra(default_cluster, "--dry", "--json", state="converged", deploy="backup.py"))
    assert ops and all(hosts == ["@fake/master-1"] for hosts in ops.values()), ops
    assert "backup | etcd snapshot taken on master-1" in ops
    ops = changed_hosts(run_pyinfra(default_cluster, "--dry", "--json", "--data", "backup_from=master-2",
                                    state="converged", deploy="backup.py"))
    assert all(hosts == ["@fake/master-2"] for hosts in ops.values()), ops
    out = run_pyinfra(default_cluster, "--dry", "--data", "backup_from=worker-1", state="converged",
                      deploy="backup.py", check=False)
    assert out.returncode != 0 and "'worker-1' is not a master" in out.stdout + out.stderr


def a_backup(cluster_file) -> str:
    cluster = load_cluster(cluster_file)
    ensure_pki(cluster)
    backup = new_backup(cluster)
    backup.db.write_bytes(os.urandom(4096))
    record(cluster, backup, "master-1", f'{{"revision": 1}}\n{sha256_file(backup.db)}  x\n')
    return str(backup.db)


def test_a_restore_stops_the_control_plane_restores_every_member_and_restarts_the_nodes(default_cluster):
    snapshot = a_backup(default_cluster)
    out = run_pyinfra(default_cluster, "--dry", "--json", "--data", f"snapshot={snapshot}", state="converged",
                      deploy="restore.py")
    ops = changed_hosts(out)
    masters, nodes = ["@fake/master-1", "@fake/master-2"], ["@fake/master-1", "@fake/master-2",
                                                             "@fake/worker-1", "@fake/worker-2"]
    names = list(ops)
    assert names.index("restore | control plane stopped on every master") < names.index(
        "restore | etcd stopped on every master") < names.index("restore | etcd started on every master and healthy")
    assert ops["restore | etcd stopped on every master"] == masters
    assert ops["restore | kubelet and kube-proxy restarted"] == nodes
    # the snapshot is secret: --diff names it, never prints it
    out = run_pyinfra(default_cluster, "--dry", "--diff", "--data", f"snapshot={snapshot}", state="converged",
                      deploy="restore.py")
    text = out.stdout + out.stderr
    assert "/var/lib/kthw/backup/snapshot.db" in text and "secret, content not shown" in text
    assert not any(marker in text for marker in SECRET_MARKERS)


def test_a_restore_refuses_before_touching_any_host(default_cluster, tmp_path):
    snapshot = a_backup(default_cluster)
    for args, why in (((), "needs the snapshot named"),
                      (("--data", f"snapshot={snapshot}", "--limit", "masters"), "without --limit")):
        out = run_pyinfra(default_cluster, "-y", "-vv", *args, state="converged", deploy="restore.py", check=False)
        assert out.returncode != 0 and why in out.stdout + out.stderr, (why, out.stdout[-2000:], out.stderr[-2000:])
        assert "systemctl" not in out.stderr  # no command reached a host
    with open(snapshot, "r+b") as fh:  # one byte changed
        fh.seek(100)
        fh.write(b"\0" if fh.read(1) != b"\0" else b"\1")
    out = run_pyinfra(default_cluster, "-y", "--data", f"snapshot={snapshot}", state="converged",
                      deploy="restore.py", check=False)
    assert out.returncode != 0 and "does not match its recorded sha256" in out.stdout + out.stderr


def test_a_reset_touches_every_machine_and_keeps_the_local_state(default_cluster):
    out = run_pyinfra(default_cluster, "--dry", "--json", state="converged", deploy="reset.py")
    ops = changed_hosts(out)
    assert len(ops["reset | services, pods, files, data, network state removed"]) == 5
    assert "reset | local PKI and kubeconfigs moved aside" not in ops
    ops = changed_hosts(run_pyinfra(default_cluster, "--dry", "--json", "--data", "reset_local_state=yes",
                                    state="converged", deploy="reset.py"))
    assert len(ops["reset | local PKI and kubeconfigs moved aside"]) == 5  # (moved once, by the first to run)
    assert (load_cluster(default_cluster).pki_dir / "ca.key").exists()  # --dry moved nothing


def with_nodes(tmp_path, base, change) -> os.PathLike:
    import yaml

    raw = yaml.safe_load(base.read_text())
    change(raw["nodes"])
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_adding_a_worker_touches_nothing_else_that_runs(tmp_path, default_cluster):
    grown = with_nodes(tmp_path, default_cluster, lambda nodes: nodes.append(
        {"name": "worker-3", "role": "worker", "ip": "192.168.56.23", "cpus": 1, "memory": 1024}))
    out = run_pyinfra(grown, "--dry", "--json", state="converged",
                      env={"KTHW_FAKE_STATE_CLUSTER": str(default_cluster), "KTHW_FAKE_WEAVE_INIT": "consensus=4"})
    others = {p["name"]: sorted(set(p["hosts_with_change"]) - {"@fake/worker-3"})
              for p in json.loads(out.stdout)["plan"]}
    # the others only learn the new name (/etc/hosts); no restart, no add-on change (Weave Net keeps
    # the consensus it started with, so its pods do not roll)
    assert {name: hosts for name, hosts in others.items() if hosts} == {
        "base | /etc/hosts lists every node": ["@fake/loadbalancer", "@fake/master-1", "@fake/master-2",
                                               "@fake/worker-1", "@fake/worker-2"]}
    changed = {p["name"] for p in json.loads(out.stdout)["plan"] if "@fake/worker-3" in p["hosts_with_change"]}
    assert "node | kubelet running" in changed


def test_a_worker_removed_from_the_file_is_drained_and_deleted(tmp_path, default_cluster):
    shrunk = with_nodes(tmp_path, default_cluster, lambda nodes: nodes.remove(
        next(n for n in nodes if n["name"] == "worker-1")))
    out = run_pyinfra(shrunk, "--dry", "--json", state="converged",
                      env={"KTHW_FAKE_STATE_CLUSTER": str(default_cluster), "KTHW_FAKE_WEAVE_INIT": "consensus=4",
                           "KTHW_FAKE_NODE_NAMES": "master-1,master-2,worker-1,worker-2"})
    changed = {p["name"]: p["hosts_with_change"] for p in json.loads(out.stdout)["plan"] if p["hosts_with_change"]}
    assert changed["addons | nodes no longer in the cluster file drained and deleted"] == ["@fake/master-1"]
    out = run_pyinfra(shrunk, "-y", "-vv", state="converged",
                      env={"KTHW_FAKE_STATE_CLUSTER": str(default_cluster), "KTHW_FAKE_WEAVE_INIT": "consensus=4",
                           "KTHW_FAKE_NODE_NAMES": "master-1,master-2,worker-1,worker-2"})
    assert "drain worker-1 --ignore-daemonsets --delete-emptydir-data" in out.stderr
    assert "delete node worker-1" in out.stderr


def test_with_the_bridge_cni_a_route_to_a_removed_node_goes(tmp_path):
    import yaml

    from kthw.model import DEFAULT_CLUSTER_FILE
    from tests.conftest import cluster_file

    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    raw["cni"] = "bridge"
    path = cluster_file(tmp_path, raw)
    # every node still routes to 10.244.2.0/24, the subnet of a worker no longer in the file
    routes = "10.244.0.0/24,10.244.1.0/24,10.244.254.0/24,10.244.255.0/24,10.244.2.0/24,192.168.99.0/24"
    out = run_pyinfra(path, "-y", "-vv", state="converged", env={"KTHW_FAKE_POD_ROUTES": routes})
    removed = [line for line in out.stderr.splitlines() if "ip route del" in line]
    assert len(removed) == 4 and all("ip route del 10.244.2.0/24" in line for line in removed), removed
    assert not any("10.244.1.0/24" in line or "192.168.99.0/24" in line for line in removed)


def test_a_new_master_joins_etcd_and_a_departed_one_is_removed(tmp_path, default_cluster):
    grown = with_nodes(tmp_path, default_cluster, lambda nodes: nodes.append(
        {"name": "master-3", "role": "master", "ip": "192.168.56.13", "cpus": 2, "memory": 2048}))
    env = {"KTHW_FAKE_STATE_CLUSTER": str(default_cluster), "KTHW_FAKE_WEAVE_INIT": "consensus=4"}
    out = run_pyinfra(grown, "--dry", "--json", state="converged", env=env)
    changed = {p["name"]: p["hosts_with_change"] for p in json.loads(out.stdout)["plan"] if p["hosts_with_change"]}
    assert changed["etcd | joins the running cluster if there is one (member add)"] == ["@fake/master-3"]
    assert changed["loadbalancer | haproxy.cfg (checked by haproxy -c)"] == ["@fake/loadbalancer"]
    # the apiserver certificate gains the new address: every apiserver restarts, one at a time
    assert set(changed["control plane | kube-apiserver restarted on change, one master at a time"]) == {
        "@fake/master-1", "@fake/master-2"}
    # and back: the first master removes master-3 from etcd once HAProxy has let go of it
    out = run_pyinfra(default_cluster, "-y", "-vv", state="converged",
                      env={"KTHW_FAKE_STATE_CLUSTER": str(grown), "KTHW_FAKE_WEAVE_INIT": "consensus=5"})
    removed = [line for line in out.stderr.splitlines() if "member remove" in line]
    assert len(removed) == 1 and "member remove 3 " in removed[0], removed
    # handing the lead to the first master first, if master-3 leads
    assert "--endpoints=https://192.168.56.13:2379" in removed[0] and "move-leader 1 " in removed[0]
    assert "members of masters no longer in the cluster file removed (master-3)" in out.stderr


def test_weave_routers_forget_a_node_no_longer_in_the_cluster(default_cluster):
    targets = "192.168.56.11,192.168.56.12,192.168.56.21,192.168.56.22,192.168.56.13"
    out = run_pyinfra(default_cluster, "-y", "-vv", state="converged", env={"KTHW_FAKE_WEAVE_TARGETS": targets})
    forgot = [line for line in out.stderr.splitlines() if "6784/forget" in line]
    assert len(forgot) == 4 and all(line.rstrip().endswith("192.168.56.13") for line in forgot), forgot
