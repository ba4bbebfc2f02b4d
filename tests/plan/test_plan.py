"""Whole-deploy plans on pyinfra's @fake connector: who gets what, in which order, and that a
converged cluster plans no change at all."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from kthw.context import NEUTRAL_FACTS, HostContext, prepared_cluster
from kthw.model import DEFAULT_CLUSTER_FILE
from operations.plan import collect
from tests.conftest import cluster_file, scaled
from tests.plan.conftest import plan, run_pyinfra
from tests.plan.states import DRIFT


def names_for(p: dict, host: str) -> list[str]:
    return [name for name, op in p.items() if f"@fake/{host}" in op["hosts_with_change"]]


@pytest.fixture(scope="module")
def fresh_plan(default_cluster):
    return plan(default_cluster)


def test_each_group_gets_only_its_components(fresh_plan):
    lb = names_for(fresh_plan, "loadbalancer")
    assert {n.split(" | ")[0] for n in lb} == {"base", "apiserver proxy"}
    # Every Kubernetes node reaches the apiservers through its own proxy.
    for worker in ("worker-1", "worker-2"):
        assert {n.split(" | ")[0] for n in names_for(fresh_plan, worker)} == {"base", "apiserver proxy", "node"}
    # Masters are Kubernetes nodes too (tainted): the CNI reaches them, so do the apiservers' calls.
    assert {n.split(" | ")[0] for n in names_for(fresh_plan, "master-1")} == {
        "base", "etcd", "control plane", "etcd snapshots", "apiserver proxy", "node", "addons"}
    assert {n.split(" | ")[0] for n in names_for(fresh_plan, "master-2")} == {
        "base", "etcd", "control plane", "etcd snapshots", "apiserver proxy", "node"}


def test_stages_are_ordered_across_groups(fresh_plan):
    order = list(fresh_plan)
    pos = {name: i for i, name in enumerate(order)}
    removal = "etcd | members no longer in the cluster file removed"
    retire = "etcd | the load balancer's former member stopped and removed"
    etcd_last = max(i for n, i in pos.items() if n.startswith("etcd |") and n not in (removal, retire))
    cp_first = min(i for n, i in pos.items() if n.startswith("control plane |"))
    lb_first = min(i for n, i in pos.items() if n.startswith("apiserver proxy |"))
    cp_last = max(i for n, i in pos.items() if n.startswith(("control plane |", "apiserver proxy |")))
    worker_first = min(i for n, i in pos.items() if n.startswith("node |"))
    worker_last = max(i for n, i in pos.items() if n.startswith("node |"))
    late = [i for n, i in pos.items() if n.startswith("addons |") and (
        n.endswith("changes applied") or n in ("addons | nodes no longer in the cluster file drained and deleted",
                                               "addons | masters labelled node-role control-plane"))]
    applied = [i for n, i in pos.items() if n.startswith("addons |") and i not in late]
    assert etcd_last < pos["--- barrier: etcd is up ---"] < min(cp_first, lb_first)
    assert cp_last < pos["--- barrier: control plane is up ---"] < worker_first
    assert pos["--- barrier: control plane is up ---"] < pos[removal]  # after HAProxy let go of them
    # new add-ons' pods wait for the nodes (kubeadm's order); a changed add-on, and the Node
    # objects' upkeep, come after the nodes' stage
    assert pos["--- barrier: control plane is up ---"] < min(applied) and max(applied) < worker_first
    assert worker_last < pos["--- barrier: nodes are up ---"] < min(late)
    assert pos[removal] < pos["--- barrier: nodes are up ---"] < pos[retire]  # quorum through the restarts
    # within a host, too: etcd must be healthy before the apiserver starts
    assert pos["etcd | healthy (after any restart)"] < pos["control plane | kube-apiserver running"]


def test_a_converged_cluster_plans_no_change(default_cluster):
    p = plan(default_cluster, state="converged")
    changed = {n: op["hosts_with_change"] for n, op in p.items() if op["hosts_with_change"]}
    assert changed == {}


def test_restarts_only_follow_changes(default_cluster):
    p = plan(default_cluster, state="converged")
    assert not p["etcd | running"]["hosts_with_change"]
    assert not p["etcd | restarted on change, one member at a time"]["hosts_with_change"]
    assert not p["node | kubelet running"]["hosts_with_change"]


def _wants(cluster_path, name):
    cluster = prepared_cluster(str(cluster_path))
    ctx = HostContext(cluster, cluster.node(name), dict(NEUTRAL_FACTS))
    return ctx, collect(ctx)


def test_workers_never_get_the_ca_key_or_other_nodes_keys(default_cluster):
    for name in ("worker-1", "worker-2"):
        _, wants = _wants(default_cluster, name)
        sources = [f for w in wants.values() for f in w.all_files()]
        dests = {f.dest for f in sources}
        assert not any("ca.key" in d or "service-account" in d or "apiserver" in d for d in dests)
        secrets = [f for f in sources if f.secret]
        assert secrets and all(f.mode == 0o600 for f in secrets)
        other = "worker-2" if name == "worker-1" else "worker-1"
        assert not any(other.encode() in (f.data or b"") for f in secrets)


def test_loadbalancer_gets_only_haproxy(default_cluster):
    ctx, wants = _wants(default_cluster, "loadbalancer")
    # (etcd and keepalived only to find what a former deploy's options may have left)
    assert [m.__name__ for m in collect(ctx)] == ["operations.base", "operations.etcd", "operations.apiserver_proxy",
                                                  "operations.keepalived"]
    assert [p for w in wants.values() for p in w.all_packages()] == ["haproxy"]
    assert not any(f.secret for w in wants.values() for f in w.all_files())


def test_masters_get_etcd_and_the_control_plane(default_cluster):
    _, wants = _wants(default_cluster, "master-2")
    dests = {f.dest for w in wants.values() for f in w.all_files()}
    assert {"/etc/etcd/etcd-server.key", "/var/lib/kubernetes/pki/ca.key",
            "/var/lib/kubernetes/encryption-config.yaml", "/usr/local/bin/kube-apiserver",
            "/etc/systemd/system/etcd.service"} <= dests
    # and the node runtime: it is a Kubernetes node too
    assert {"/usr/local/bin/kubelet", "/usr/local/bin/kube-proxy", "/usr/local/bin/containerd",
            "/usr/local/sbin/runc", "/opt/cni/bin/loopback", "/var/lib/kubelet/pki/kubelet.key"} <= dests
    assert not any("kubelet-worker" in d for d in dests)
    # Its own kubelet, registered with the control-plane taint.
    config = next(f for w in wants.values() for f in w.all_files()
                  if f.dest == "/var/lib/kubelet/kubelet-config.yaml")
    taints = yaml.safe_load(config.data)["registerWithTaints"]
    assert taints == [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]


def test_three_masters_three_workers(tmp_path):
    raw = scaled(3, 3, yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()))
    path = cluster_file(tmp_path, raw)
    p = plan(path)
    assert set(p["etcd | systemd unit"]["hosts_with_change"]) == {f"@fake/master-{i}" for i in (1, 2, 3)}
    assert set(p["node | kubelet running"]["hosts_with_change"]) == {
        f"@fake/{r}-{i}" for i in (1, 2, 3) for r in ("master", "worker")}
    assert p["addons | 20-coredns.yaml applied"]["hosts_with_change"] == ["@fake/master-1"]
    unit = _wants(path, "master-3")[1]
    etcd_unit = next(f for w in unit.values() for f in w.all_files() if f.dest.endswith("etcd.service"))
    assert b"master-3=https://192.168.56.13:2380" in etcd_unit.data
    converged = plan(path, state="converged")
    assert [n for n, op in converged.items() if op["hosts_with_change"]] == []


def test_bridge_cni_adds_routes_and_no_weave(tmp_path):
    raw = copy.deepcopy(yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()))
    raw["cni"] = "bridge"
    path = cluster_file(tmp_path, raw)
    p = plan(path)
    assert "addons | 10-weave.yaml applied" not in p
    assert set(p["node | pod network: routes to other nodes' pods, NAT to the outside"][
        "hosts_with_change"]) == {"@fake/worker-1", "@fake/worker-2", "@fake/master-1", "@fake/master-2"}
    _, wants = _wants(path, "worker-1")
    unit = next(f for w in wants.values() for f in w.all_files() if "pod-network" in f.dest)
    assert b"ip route replace 10.244.1.0/24 via 192.168.56.22" in unit.data
    assert b"ip route replace 10.244.255.0/24 via 192.168.56.11" in unit.data  # master-1's pods
    assert b"-s 10.244.0.0/24 ! -d 10.244.0.0/16 -j MASQUERADE" in unit.data


def test_dry_diff_never_prints_secrets(default_cluster):
    out = run_pyinfra(default_cluster, "--dry", "--diff")
    text = out.stdout + out.stderr
    assert "Will create /etc/haproxy/haproxy.cfg" in text  # diffs are shown...
    assert "(secret, content not shown)" in text  # ...but not for secrets
    cluster = prepared_cluster(str(default_cluster))
    enc = (cluster.pki_dir / "encryption-config.yaml").read_text()
    secret = re.search(r"secret: (\S+)", enc).group(1)
    weave_password = (cluster.pki_dir / "weave-password").read_text().strip()
    assert "Will create /etc/kubernetes/addons/05-weave-password.yaml" in ANSI.sub("", text)
    for marker in ("PRIVATE KEY", "client-key-data", secret, weave_password):
        assert marker not in text
    for key in cluster.pki_dir.glob("*.key"):
        body = "".join(key.read_text().splitlines()[1:-1])
        assert body[:40] not in text.replace("\n", "")


def remote_commands(stderr: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for host in re.findall(r"\[@fake/([\w-]+)\]\s+>>> ", stderr):
        counts[host] = counts.get(host, 0) + 1
    return counts


def test_a_noop_rerun_sends_one_remote_command_per_host(default_cluster):
    out = run_pyinfra(default_cluster, "-y", "-vv", state="converged")
    counts = remote_commands(out.stderr)
    assert counts == {h: 1 for h in ("loadbalancer", "master-1", "master-2", "worker-1", "worker-2")}, counts
    # and interactively (plan, then execute) the snapshot is still the only question asked
    out = run_pyinfra(default_cluster, "--dry", "-vv", state="converged")
    assert set(remote_commands(out.stderr).values()) == {1}


def test_renewed_certificates_restart_masters_one_at_a_time(default_cluster):
    p = plan(default_cluster, state="renewed")
    masters = ["@fake/master-1", "@fake/master-2"]
    for op in ("etcd | restarted on change, one member at a time",
               "control plane | kube-apiserver restarted on change, one master at a time"):
        assert p[op]["hosts_with_change"] == masters
    assert not p["etcd | running"]["hosts_with_change"]  # nothing restarts them all at once
    assert not p["control plane | kube-apiserver running"]["hosts_with_change"]
    # each master restarts etcd once, waiting for it to be healthy before pyinfra moves on
    # to the next host (the operation runs with _serial=True; the lab checks the timing)
    out = run_pyinfra(default_cluster, "-y", "-vv", state="renewed")
    restarts = [line for line in out.stderr.splitlines() if "systemctl restart etcd" in line]
    assert sorted(re.search(r"@fake/([\w-]+)", r).group(1) for r in restarts) == ["master-1", "master-2"]
    assert all("endpoint health" in r for r in restarts)
    # ...and only while the other member is healthy, if this one serves (the guard)
    for r in restarts:
        me = re.search(r"@fake/([\w-]+)", r).group(1)
        other = {"master-1": "192.168.56.12", "master-2": "192.168.56.11"}[me]
        guard, restart = r.split("systemctl restart etcd", 1)
        assert f"--endpoints=https://{other}:2379 " in guard and guard.count("endpoint health") == 2
        assert "not restarting etcd" in guard
    api = [line for line in out.stderr.splitlines() if "systemctl restart kube-apiserver" in line]
    assert len(api) == 2 and all("/readyz" in a.split("systemctl restart")[0] for a in api)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def listed_changes(text: str) -> dict[str, set[str]]:
    """{host: paths} from the "Will create/modify/change <path>" lines of --dry --diff."""
    out: dict[str, set[str]] = {}
    for host, path in re.findall(r"\[@fake/([\w-]+)\]\s+Will (?:create|modify|change) (\S+)", ANSI.sub("", text)):
        out.setdefault(host, set()).add(path)
    return out


def test_dry_diff_lists_every_changed_file(default_cluster):
    out = run_pyinfra(default_cluster, "--dry", "--diff", state="drifted")
    text = ANSI.sub("", out.stdout + out.stderr)
    assert listed_changes(text) == {host: set(paths) for host, paths in DRIFT.items()}
    # mode and owner changes the way files.put shows them: old value, then new
    assert re.search(r"Will change /var/lib/kubernetes/pki/kube-apiserver.key\n\s+mode 666\n\s+mode 600", text)
    assert re.search(r"Will change /var/lib/kubernetes/pki/service-account.pub\n\s+chown nobody:nogroup\n"
                     r"\s+chown root:root", text)
    assert re.search(r"Will modify /etc/etcd/etcd-server.key\n\s+\(secret, content not shown\)", text)
    assert "PRIVATE KEY" not in text


def test_dry_diff_of_a_fresh_cluster_lists_every_managed_file(default_cluster):
    out = run_pyinfra(default_cluster, "--dry", "--diff")
    cluster = prepared_cluster(str(default_cluster))
    want = {}
    for node in cluster.nodes:
        _, wants = _wants(default_cluster, node.name)
        want[node.name] = {f.dest for w in wants.values() for f in w.all_files()}
    assert listed_changes(out.stdout + out.stderr) == want


def test_weave_gets_the_mesh_password_from_a_secret(default_cluster):
    ctx, wants = _wants(default_cluster, "master-1")
    files = {f.dest: f for w in wants.values() for f in w.all_files()}
    password_file = files["/etc/kubernetes/addons/05-weave-password.yaml"]
    assert password_file.secret and password_file.mode == 0o600
    password = (ctx.cluster.pki_dir / "weave-password").read_text().strip()
    assert password.encode() in password_file.data
    daemonset = yaml.safe_load_all(files["/etc/kubernetes/addons/10-weave.yaml"].data)
    ds = next(d for d in daemonset if d["kind"] == "DaemonSet")
    env = {e["name"]: e for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WEAVE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "weave-passwd", "key": "weave-passwd"}
    assert env["IPALLOC_RANGE"]["value"] == "10.244.0.0/16"
    assert password.encode() not in files["/etc/kubernetes/addons/10-weave.yaml"].data


def test_a_pod_network_change_on_a_running_weave_cluster_is_refused_before_anything_runs(default_cluster):
    out = run_pyinfra(default_cluster, "-y", "-vv", state="converged", check=False,
                      env={"KTHW_FAKE_WEAVE_RANGE": "10.32.0.0/12"})
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "network.pods is 10.244.0.0/16, but the running Weave Net uses 10.32.0.0/12" in text
    assert "nothing was changed" in text
    # the snapshot is the only thing any host was asked
    assert all(n == 1 for n in remote_commands(out.stderr).values())
    # the range the mesh runs with plans nothing
    out = run_pyinfra(default_cluster, "--dry", "--json", state="converged",
                      env={"KTHW_FAKE_WEAVE_RANGE": "10.244.0.0/16"})
    assert [p["name"] for p in json.loads(out.stdout)["plan"] if p["hosts_with_change"]] == []


KUBELET_HOSTS = {f"@fake/{n}" for n in ("master-1", "master-2", "worker-1", "worker-2")}


def test_registry_mirrors_reach_every_node_without_a_containerd_restart(tmp_path, default_cluster):
    # the same cluster (PKI, artifacts), plus a mirror
    raw = yaml.safe_load(default_cluster.read_text())
    raw["artifacts"]["registry_mirrors"] = {"registry.k8s.io": ["http://192.168.56.1:5000"]}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    # a converged cluster gains the mirror: the hosts.toml, nothing else
    out = run_pyinfra(path, "--dry", "--json", state="converged",
                      env={"KTHW_FAKE_STATE_CLUSTER": str(default_cluster)})
    changed = {p["name"]: set(p["hosts_with_change"]) for p in json.loads(out.stdout)["plan"] if p["hosts_with_change"]}
    assert changed == {"node | directories": KUBELET_HOSTS, "node | registry mirrors": KUBELET_HOSTS}
    _, wants = _wants(path, "worker-1")
    hosts_toml = next(f for w in wants.values() for f in w.all_files() if f.dest.endswith("hosts.toml"))
    assert hosts_toml.dest == "/etc/containerd/certs.d/registry.k8s.io/hosts.toml"
    assert [n for n, p in plan(path, state="converged").items() if p["hosts_with_change"]] == []


def test_a_registry_dropped_from_the_mirrors_loses_its_hosts_toml(default_cluster):
    out = run_pyinfra(default_cluster, "--dry", "--json", state="converged",
                      env={"KTHW_FAKE_REGISTRY_HOSTS": "registry.k8s.io"})
    changed = {p["name"]: set(p["hosts_with_change"]) for p in json.loads(out.stdout)["plan"] if p["hosts_with_change"]}
    assert changed == {"node | registry mirrors no longer configured removed": KUBELET_HOSTS}


def test_a_changed_add_on_is_applied_after_the_nodes_stage(default_cluster, tmp_path):
    # a new CoreDNS version on a running cluster: its manifest is applied once every node's stage
    # is done (where the images come as archives, they are imported by then), not before
    raw = yaml.safe_load(default_cluster.read_text())  # the same state folder (identity) and artifacts
    raw["versions"]["coredns"] = "v1.14.8"
    (path := tmp_path / "cluster.yaml").write_text(yaml.safe_dump(raw))
    out = run_pyinfra(path, "--dry", "--json", state="converged", env={"KTHW_FAKE_STATE_CLUSTER": str(default_cluster)})
    changed = {p["name"]: p["hosts_with_change"] for p in json.loads(out.stdout)["plan"] if p["hosts_with_change"]}
    assert changed == {"addons | 20-coredns.yaml rendered": ["@fake/master-1"],
                       "addons | 20-coredns.yaml changes applied": ["@fake/master-1"]}


def test_a_rerun_after_an_interrupted_run_makes_the_restarts_it_owes(default_cluster):
    # the files are all in place: what the interrupted run placed is owed its restart or apply
    out = run_pyinfra(default_cluster, "--dry", "--json", state="interrupted")
    changed = {p["name"]: p["hosts_with_change"] for p in json.loads(out.stdout)["plan"] if p["hosts_with_change"]}
    assert changed == {
        "etcd | restarted on change, one member at a time": ["@fake/master-1"],
        "etcd | healthy (after any restart)": ["@fake/master-1"],
        "addons | 20-coredns.yaml changes applied": ["@fake/master-1"],
        "node | kubelet running": ["@fake/worker-1"],
    }
    out = run_pyinfra(default_cluster, "-y", "-vv", state="interrupted")
    kubelet = [line for line in out.stderr.splitlines() if "systemctl restart kubelet" in line]
    assert len(kubelet) == 1 and "systemctl daemon-reload" in kubelet[0]
    assert "/var/lib/kthw/applied/kubelet" in kubelet[0]
    etcd = [line for line in out.stderr.splitlines() if "systemctl restart etcd" in line]
    assert len(etcd) == 1 and "/var/lib/kthw/applied/etcd" in etcd[0]


def test_hosts_of_another_cluster_identity_are_refused_before_anything_runs(default_cluster):
    out = run_pyinfra(default_cluster, "-y", "-vv", state="converged", check=False,
                      env={"KTHW_FAKE_OTHER_IDENTITY": "1"})
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "holds another cluster identity" in text and "Nothing was changed" in text
    assert "/var/lib/kubernetes/pki/ca.crt, /var/lib/kubernetes/encryption-config.yaml differ" in text
    assert "python -m kthw pki adopt" in text and "kthw_replace_identity=yes" in text
    assert all(n == 1 for n in remote_commands(out.stderr).values())  # only the snapshots were taken
    # replacing it on purpose is one explicit flag away
    out = run_pyinfra(default_cluster, "--dry", "--json", "--data", "kthw_replace_identity=yes",
                      state="converged", env={"KTHW_FAKE_OTHER_IDENTITY": "1"})
    changed = {p["name"] for p in json.loads(out.stdout)["plan"] if p["hosts_with_change"]}
    assert "control plane | certificates and keys" in changed


def test_binaries_travel_zstd_compressed_and_zstd_is_installed_first(default_cluster, tmp_path):
    out = run_pyinfra(default_cluster, "-y", "-vv", state="fresh")
    text = out.stdout + out.stderr
    worker = re.findall(r"^\[@fake/worker-1\]\s+>>> (.*)$", text, re.M)
    kubelet = next(c for c in worker if "/usr/local/bin/kubelet.kthw-new" in c)
    assert re.search(r"&& zstd -dqc \S+ > /usr/local/bin/kubelet\.kthw-new &&", kubelet)
    hosts = next(c for c in worker if "/etc/hosts.kthw-new" in c)
    assert re.search(r"&& cat \S+ > /etc/hosts\.kthw-new &&", hosts)  # small files as they are
    packages = [c for c in worker if "apt-get install" in c]
    assert len(packages) == 1 and packages[0].endswith(" zstd")
    assert worker.index(packages[0]) < min(i for i, c in enumerate(worker) if "zstd -dqc" in c)
    cache = yaml.safe_load(default_cluster.read_text())["artifacts"]["cache_dir"]
    assert sorted(p.suffix for p in (default_cluster.parent / cache / "zstd").iterdir())[:1] == [".zst"]
