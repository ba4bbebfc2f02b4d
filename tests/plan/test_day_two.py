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
    backup.encryption_config.write_bytes((cluster.pki_dir / "encryption-config.yaml").read_bytes())
    record(cluster, backup, "master-1",
           f'{{"revision": 1}}\n{sha256_file(backup.db)}  x\n{sha256_file(backup.encryption_config)}  y\n')
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
        "restore | etcd stopped on every member") < names.index("restore | etcd started on every member and healthy")
    assert ops["restore | etcd stopped on every member"] == masters
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
    with open(snapshot, "r+b") as fh:  # one byte changed (read moves the position: seek back before writing)
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(b"\0" if byte != b"\0" else b"\1")
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
    # the others only learn the new name (/etc/hosts) and the masters its pod subnet (their record);
    # no restart, no add-on change (Weave Net keeps the consensus it started with, so its pods do not roll)
    assert {name: hosts for name, hosts in others.items() if hosts} == {
        "base | /etc/hosts lists every node": ["@fake/loadbalancer", "@fake/master-1", "@fake/master-2",
                                               "@fake/worker-1", "@fake/worker-2"],
        "control plane | record of the nodes' pod subnets": ["@fake/master-1", "@fake/master-2"]}
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
    # every HAProxy in front of the apiservers learns of it: the load balancer's and each node's
    assert set(changed["apiserver proxy | haproxy.cfg (checked by haproxy -c)"]) == {
        f"@fake/{n}" for n in ("loadbalancer", "master-1", "master-2", "master-3", "worker-1", "worker-2")}
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
    assert "members no longer in the cluster file removed (master-3)" in out.stderr


def test_weave_routers_forget_a_node_no_longer_in_the_cluster(default_cluster):
    targets = "192.168.56.11,192.168.56.12,192.168.56.21,192.168.56.22,192.168.56.13"
    out = run_pyinfra(default_cluster, "-y", "-vv", state="converged", env={"KTHW_FAKE_WEAVE_TARGETS": targets})
    forgot = [line for line in out.stderr.splitlines() if "6784/forget" in line]
    assert len(forgot) == 4 and all(line.rstrip().endswith("192.168.56.13") for line in forgot), forgot


def upgraded_to(tmp_path, base, **versions) -> os.PathLike:
    """The cluster of ``base`` (same state and PKI) with other versions and their (fake) artifacts."""
    import yaml

    from tests.conftest import make_fake_artifacts

    raw = yaml.safe_load(base.read_text())
    raw["versions"].update(versions)
    art = tmp_path / "artifacts"
    make_fake_artifacts(art, raw["versions"])
    raw["artifacts"]["directory"] = str(art)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_an_upgrade_goes_etcd_then_apiservers_then_one_drained_node_at_a_time(tmp_path, default_cluster):
    newer = upgraded_to(tmp_path, default_cluster, kubernetes="v1.37.2", etcd="v3.6.17", containerd="v2.2.10")
    env = {"KTHW_FAKE_STATE_CLUSTER": str(default_cluster), "KTHW_FAKE_WEAVE_INIT": "consensus=4",
           "KTHW_FAKE_RUNNING": "kubernetes=Kubernetes v1.36.3,etcd=etcd Version: 3.6.16"}
    out = run_pyinfra(newer, "--dry", "--json", state="converged", env=env)
    steps = [(p["name"], h.removeprefix("@fake/")) for p in json.loads(out.stdout)["plan"]
             for h in p["hosts_with_change"]]
    names = [name for name, _ in steps]
    # etcd member by member, then each apiserver in turn, then the controller-manager and scheduler
    assert [h for n, h in steps if n == "etcd | restarted on change, one member at a time"] == ["master-1", "master-2"]
    last_etcd = max(i for i, n in enumerate(names) if n.startswith("etcd | restarted"))
    first_apiserver = names.index("control plane | kube-apiserver restarted on change, one master at a time")
    assert last_etcd < first_apiserver
    # no node restarts in the parallel stage: each waits for its turn ...
    assert not [s for s in steps if s[0] in ("node | kubelet running", "node | kube-proxy running",
                                             "node | containerd running")]
    # ... drained by the first master before, Ready and uncordoned after, one node after the other
    turns = [s for s in steps if s[0].startswith("upgrade | ") or "in this node's turn" in s[0]]
    expected = []
    for node in ("master-1", "master-2", "worker-1", "worker-2"):
        expected += [(f"upgrade | {node} drained", "master-1")]
        expected += [(f"node | {u} restarted on its new binaries, in this node's turn", node)
                     for u in ("containerd", "kubelet", "kube-proxy")]
        expected += [(f"upgrade | {node} Ready on v1.37.2 and uncordoned", "master-1")]
    assert turns == expected, turns
    assert names.index("control plane | kube-scheduler restarted on change, in turn") < names.index(
        "upgrade | master-1 drained")
    # and the commands: drain marks the node first; uncordon waits for Ready on the new version
    out = run_pyinfra(newer, "-y", "-vv", state="converged", env=env)
    assert "annotate node worker-1 kthw.io/drained-for-upgrade=true --overwrite" in out.stderr
    assert "drain worker-1 --ignore-daemonsets --delete-emptydir-data --timeout=300s" in out.stderr
    assert "True v1.37.2" in out.stderr and "uncordon worker-1" in out.stderr


def test_a_converged_cluster_walks_no_upgrade_turn(default_cluster):
    # no host plans an operation for any node's turn: the plan stays linear in the cluster's size
    plan = json.loads(run_pyinfra(default_cluster, "--dry", "--json", state="converged").stdout)["plan"]
    turns = [p["name"] for p in plan if p["name"].startswith("upgrade | ") or "'s turn" in p["name"]
             or p["name"].endswith(" restarted ---")]
    assert turns == []


def test_a_node_left_out_of_the_run_is_not_drained(tmp_path, default_cluster):
    # before: the first master drained worker-2 and waited for ever for it to come back upgraded
    newer = upgraded_to(tmp_path, default_cluster, kubernetes="v1.37.2")
    env = {"KTHW_FAKE_STATE_CLUSTER": str(default_cluster), "KTHW_FAKE_WEAVE_INIT": "consensus=4",
           "KTHW_FAKE_RUNNING": "kubernetes=Kubernetes v1.36.3"}
    limit = ["--limit", "@fake/master-1", "--limit", "@fake/master-2", "--limit", "@fake/worker-1"]
    changed = changed_hosts(run_pyinfra(newer, "--dry", "--json", *limit, state="converged", env=env))
    drained = sorted(n for n in changed if n.startswith("upgrade | ") and n.endswith(" drained"))
    assert drained == ["upgrade | master-1 drained", "upgrade | master-2 drained", "upgrade | worker-1 drained"]


def test_a_node_left_drained_by_an_interrupted_upgrade_is_uncordoned(tmp_path, default_cluster):
    # worker-2 runs the new kubelet already, but the run stopped before its uncordon
    newer = upgraded_to(tmp_path, default_cluster, kubernetes="v1.37.2")
    env = {"KTHW_FAKE_STATE_CLUSTER": str(newer), "KTHW_FAKE_WEAVE_INIT": "consensus=4",
           "KTHW_FAKE_NODE_STATUS_DRAINED": "worker-2"}
    changed = changed_hosts(run_pyinfra(newer, "--dry", "--json", state="converged", env=env))
    assert {n: h for n, h in changed.items() if n.startswith("upgrade | ")} == {
        "upgrade | worker-2 Ready on v1.37.2 and uncordoned": ["@fake/master-1"]}


def test_a_version_skew_the_policy_forbids_is_refused_before_any_host_is_touched(tmp_path, default_cluster):
    newer = upgraded_to(tmp_path / "skip", default_cluster, kubernetes="v1.38.0")
    env = {"KTHW_FAKE_STATE_CLUSTER": str(default_cluster), "KTHW_FAKE_RUNNING": "kubernetes=Kubernetes v1.36.3"}
    out = run_pyinfra(newer, "--dry", state="converged", env=env, check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "two minor versions at once" in text and "Nothing was changed" in text
    assert "Fix: set versions.kubernetes to the newest v1.37 patch release" in text
    older = upgraded_to(tmp_path / "down", default_cluster, kubernetes="v1.35.4")
    out = run_pyinfra(older, "-y", state="converged", env=env, check=False)
    assert out.returncode != 0 and "an older minor version" in out.stdout + out.stderr
    assert "Starting operation" not in out.stdout + out.stderr  # refused while planning
    # a node upgrade needs the masters in the run (control plane first, drained from master-1)
    newer = upgraded_to(tmp_path / "limit", default_cluster, kubernetes="v1.37.2")
    out = run_pyinfra(newer, "--dry", "--limit", "@fake/worker-1", state="converged", env=env, check=False)
    assert out.returncode != 0
    assert "master-1, master-2 are not in this run (--limit)" in out.stdout + out.stderr


def test_the_load_balancer_gains_an_etcd_only_member_and_loses_it_again(tmp_path, default_cluster):
    """`etcd: true` on the load balancer: a third member joins the running cluster there (no
    control plane, no kubelet), every member and apiserver learns of it; taken away, it is
    removed from etcd like a departed master."""
    def witness(nodes):
        nodes[0]["etcd"] = True
    grown = with_nodes(tmp_path, default_cluster, witness)
    env = {"KTHW_FAKE_STATE_CLUSTER": str(default_cluster)}
    changed = changed_hosts(run_pyinfra(grown, "--dry", "--json", state="converged", env=env))
    assert changed["etcd | joins the running cluster if there is one (member add)"] == ["@fake/loadbalancer"]
    assert changed["etcd | binaries"] == ["@fake/loadbalancer"]
    assert set(changed["etcd | restarted on change, one member at a time"]) == {"@fake/master-1", "@fake/master-2"}
    assert set(changed["control plane | kube-apiserver restarted on change, one master at a time"]) == {
        "@fake/master-1", "@fake/master-2"}  # --etcd-servers names the new member
    assert not [name for name, hosts in changed.items() if "@fake/loadbalancer" in hosts
                and name.split(" | ")[0] in ("control plane", "node")]
    # converged with it: nothing to do
    assert changed_hosts(run_pyinfra(grown, "--dry", "--json", state="converged")) == {}
    # and back: the first master removes the load balancer's member
    out = run_pyinfra(default_cluster, "-y", "-vv", state="converged", env={"KTHW_FAKE_STATE_CLUSTER": str(grown)})
    removed = [line for line in out.stderr.splitlines() if "member remove" in line]
    assert len(removed) == 1 and "member remove 3 " in removed[0], removed
    assert "members no longer in the cluster file removed (loadbalancer)" in out.stderr
    # then, last, the load balancer's etcd is stopped and its files removed
    lines = out.stderr.splitlines()
    retire = [i for i, line in enumerate(lines) if "systemctl disable --now etcd && rm -rf /etc/etcd" in line]
    assert len(retire) == 1 and "/usr/local/bin/etcdctl" in lines[retire[0]], retire
    assert retire[0] > max(i for i, line in enumerate(lines) if "member remove" in line)


def test_a_restore_includes_the_etcd_only_member(tmp_path, default_cluster):
    def witness(nodes):
        nodes[0]["etcd"] = True
    cluster = with_nodes(tmp_path, default_cluster, witness)
    out = run_pyinfra(cluster, "--dry", "--json", "--data", f"snapshot={a_backup(cluster)}", state="converged",
                      deploy="restore.py")
    ops = changed_hosts(out)
    assert ops["restore | etcd stopped on every member"] == ["@fake/loadbalancer", "@fake/master-1",
                                                             "@fake/master-2"]
    assert "@fake/loadbalancer" not in ops["restore | control plane stopped on every master"]
    # each member restores its own data dir, for a cluster of all three
    out = run_pyinfra(cluster, "-y", "-vv", "--data", f"snapshot={a_backup(cluster)}", state="converged",
                      deploy="restore.py")
    restores = [line for line in out.stderr.splitlines() if "etcdutl snapshot restore" in line]
    assert len(restores) == 3 and any("--name loadbalancer " in line for line in restores), restores
    assert all("loadbalancer=https://192.168.56.30:2380" in line for line in restores), restores


def two_load_balancers(nodes):
    nodes.insert(1, {"name": "loadbalancer-2", "role": "loadbalancer", "ip": "192.168.56.31", "cpus": 1,
                     "memory": 512})


def test_a_second_load_balancer_shares_a_virtual_ip_and_gives_it_back(tmp_path, default_cluster):
    """network.api_vip with two load balancers: keepalived on both, HAProxy answering on the
    virtual IP; nothing changes on the nodes (they use their own proxies). Without it again, the
    first load balancer's keepalived goes."""
    import yaml

    vip = with_nodes(tmp_path, default_cluster, two_load_balancers)
    raw = yaml.safe_load(vip.read_text())
    raw["network"]["api_vip"] = "192.168.56.40"
    vip.write_text(yaml.safe_dump(raw))
    changed = changed_hosts(run_pyinfra(vip, "--dry", "--json", state="converged",
                                        env={"KTHW_FAKE_STATE_CLUSTER": str(default_cluster)}))
    lbs = ["@fake/loadbalancer", "@fake/loadbalancer-2"]
    assert changed["keepalived | keepalived.conf (checked by keepalived -t)"] == lbs
    assert changed["keepalived | running"] == lbs
    assert set(changed["apiserver proxy | haproxy.cfg (checked by haproxy -c)"]) == set(lbs)
    # nodes' own files do not change (their proxies never named a load balancer)
    assert not [name for name, hosts in changed.items() if name.startswith("node |")]
    assert changed_hosts(run_pyinfra(vip, "--dry", "--json", state="converged")) == {}
    # back to one load balancer: its keepalived is stopped and its config removed
    out = run_pyinfra(default_cluster, "-y", "-vv", state="converged", env={"KTHW_FAKE_STATE_CLUSTER": str(vip)},
                      check=False)
    retire = "systemctl disable --now keepalived && rm -f /etc/keepalived/keepalived.conf"
    assert retire in out.stderr, out.stderr[-3000:]
