"""Rendered configs, checked by the real tools where they exist (haproxy -c,
systemd-analyze verify) and by their own parsers otherwise."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from kthw.context import NEUTRAL_FACTS, HostContext, prepared_cluster
from kthw.model import DEFAULT_CLUSTER_FILE
from kthw.paths import unit_file, unit_name
from operations.keepalived import CONFIG_TEST
from operations.plan import collect
from tests.conftest import cluster_file, scaled


@pytest.fixture(scope="module")
def default_path(tmp_path_factory):
    return cluster_file(tmp_path_factory.mktemp("rendered"))


def rendered(path, node: str, **facts) -> dict[str, bytes]:
    cluster = prepared_cluster(str(path))
    ctx = HostContext(cluster, cluster.node(node), {**NEUTRAL_FACTS, **facts})
    return {f.dest: f.data for w in collect(ctx).values() for f in w.all_files() if f.data is not None}


@pytest.mark.parametrize("topology", ["default", "3 masters"])
@pytest.mark.parametrize("node", ["loadbalancer", "master-1", "worker-1"])
def test_haproxy_accepts_the_config(tmp_path, default_path, topology, node):
    path = default_path if topology == "default" else cluster_file(
        tmp_path, scaled(3, 2, yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())))
    cfg = rendered(path, node)["/etc/haproxy/haproxy.cfg"].decode()
    masters = re.findall(r"^\s+server (\S+) (\S+):6443( backup)?$", cfg, re.M)
    assert [m[0] for m in masters] == [f"master-{i}" for i in range(1, 3 if topology == "default" else 4)]
    # The load balancer listens for operators; a node on its loopback, for itself.
    lb_ip = prepared_cluster(str(path)).loadbalancer.ip
    assert re.findall(r"^\s+bind (\S+)$", cfg, re.M) == [
        f"{lb_ip}:6443" if node == "loadbalancer" else "127.0.0.1:7445"]
    # A master prefers its own apiserver; the others serve it only while that one is not ready.
    backups = [name for name, _, backup in masters if backup]
    assert backups == ([name for name, _, _ in masters if name != "master-1"] if node == "master-1" else [])
    assert ("option allbackups" in cfg) == bool(backups)
    # Check as haproxy would run it, but bound to loopback so this machine can test it.
    (tmp_path / "haproxy.cfg").write_text(cfg.replace(f"bind {lb_ip}:", "bind 127.0.0.1:"))
    out = subprocess.run(["haproxy", "-c", "-f", tmp_path / "haproxy.cfg"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


UNITS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
         "containerd", "kubelet", "kube-proxy", "kthw-pod-network",
         "kthw-etcd-snapshot", "kthw-etcd-snapshot.timer"]


def verifiable_unit(files: dict[str, bytes], unit: str, folder) -> object:
    """``unit``'s file written into ``folder`` for systemd-analyze verify, each command it runs
    pointed at a stand-in (verify checks that they exist); a timer with the service it starts."""
    stubs = folder / "bin"
    stubs.mkdir(exist_ok=True)
    names = [unit, unit_name(unit).removesuffix(".timer")] if unit.endswith(".timer") else [unit]
    for name in names:
        text = files[unit_file(name)].decode()
        for cmd in set(re.findall(r"^Exec\w+=-?(/\S+)", text, re.M)):
            stub = stubs / cmd.strip("/").replace("/", "_")
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
            text = text.replace(cmd, str(stub))
        (folder / unit_name(name)).write_text(text)
    return folder / unit_name(unit)


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_accepts_every_unit(tmp_path, default_path, unit):
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    raw["cni"] = "bridge"
    path = default_path if unit != "kthw-pod-network" else cluster_file(tmp_path / "bridge", raw)
    node = "master-1" if unit.startswith(("etcd", "kube-a", "kube-c", "kube-s", "kthw-etcd")) else "worker-1"
    unit_path = verifiable_unit(rendered(path, node), unit, tmp_path)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", unit_path],
                         capture_output=True, text=True)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_kubelet_config_is_locked_down(default_path):
    cfg = yaml.safe_load(rendered(default_path, "worker-1")["/var/lib/kubelet/kubelet-config.yaml"])
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authentication"]["webhook"]["enabled"] is True
    assert cfg["authorization"]["mode"] == "Webhook"
    assert cfg["clusterDNS"] == ["10.96.0.10"] and cfg["clusterDomain"] == "cluster.local"
    assert cfg["cgroupDriver"] == "systemd"
    assert cfg["podCIDR"] == "10.244.0.0/24"
    assert "failCgroupV1" not in cfg


def test_kubelet_on_cgroup_v1_host_and_resolved(default_path):
    cfg = yaml.safe_load(rendered(default_path, "worker-2", cgroup="v1", resolved=True)[
        "/var/lib/kubelet/kubelet-config.yaml"])
    assert cfg["failCgroupV1"] is False
    assert cfg["resolvConf"] == "/run/systemd/resolve/resolv.conf"


def test_kube_proxy_config(default_path):
    files = rendered(default_path, "worker-1")
    cfg = yaml.safe_load(files["/var/lib/kube-proxy/kube-proxy-config.yaml"])
    assert cfg["mode"] == "iptables" and cfg["clusterCIDR"] == "10.244.0.0/16"
    assert "conntrack" not in cfg
    in_container = yaml.safe_load(rendered(default_path, "worker-1", container="lxc")[
        "/var/lib/kube-proxy/kube-proxy-config.yaml"])
    assert in_container["conntrack"]["maxPerCore"] == 0


def test_containerd_uses_systemd_cgroups_and_our_pause_image(default_path):
    cfg = tomllib.loads(rendered(default_path, "worker-1")["/etc/containerd/config.toml"].decode())
    runtime = cfg["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert cfg["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == "registry.k8s.io/pause:3.10"


def test_registry_mirrors_become_containerd_hosts_files(tmp_path, default_path):
    plain = rendered(default_path, "worker-1")
    cfg = tomllib.loads(plain["/etc/containerd/config.toml"].decode())
    assert cfg["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert not [p for p in plain if p.startswith("/etc/containerd/certs.d/")]
    raw = yaml.safe_load(default_path.read_text())
    raw["artifacts"]["registry_mirrors"] = {"registry.k8s.io": ["http://192.168.56.1:5000", "https://m2.lan/k8s"],
                                            "docker.io": ["http://192.168.56.1:5001"]}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    files = rendered(path, "master-1")
    k8s = tomllib.loads(files["/etc/containerd/certs.d/registry.k8s.io/hosts.toml"].decode())
    assert k8s["server"] == "https://registry.k8s.io"
    assert list(k8s["host"]) == ["http://192.168.56.1:5000", "https://m2.lan/k8s"]  # order kept: tried in turn
    assert all(h["capabilities"] == ["pull", "resolve"] for h in k8s["host"].values())
    hub = tomllib.loads(files["/etc/containerd/certs.d/docker.io/hosts.toml"].decode())
    assert hub["server"] == "https://registry-1.docker.io"
    assert files["/etc/containerd/config.toml"] == plain["/etc/containerd/config.toml"]  # no restart
    assert not [p for p in rendered(path, "loadbalancer") if p.startswith("/etc/containerd/")]


def test_containerd_keeps_oom_scores_where_root_cannot_lower_them(default_path):
    normal = tomllib.loads(rendered(default_path, "worker-1")["/etc/containerd/config.toml"].decode())
    assert "restrict_oom_score_adj" not in normal["plugins"]["io.containerd.cri.v1.runtime"]
    restricted = tomllib.loads(rendered(default_path, "worker-1", sys_resource=False)[
        "/etc/containerd/config.toml"].decode())
    assert restricted["plugins"]["io.containerd.cri.v1.runtime"]["restrict_oom_score_adj"] is True


def test_bridge_cni_config(tmp_path):
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    raw["cni"] = "bridge"
    files = rendered(cluster_file(tmp_path, raw), "worker-2")
    conf = json.loads(files["/etc/cni/net.d/10-bridge.conflist"])
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    assert conf["plugins"][0]["ipMasq"] is False  # pod-to-pod keeps pod addresses
    json.loads(files["/etc/cni/net.d/99-loopback.conf"])


def test_addon_manifests(default_path):
    files = rendered(default_path, "master-1")
    docs = {}
    for dest, data in files.items():
        if dest.startswith("/etc/kubernetes/addons/"):
            for doc in yaml.safe_load_all(data):
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    assert docs[("Service", "kube-dns")]["spec"]["clusterIP"] == "10.96.0.10"
    weave = docs[("DaemonSet", "weave-net")]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "IPALLOC_RANGE", "value": "10.244.0.0/16"} in weave["env"]
    # Quorum over every Weave peer (2 masters + 2 workers -> consensus=4, quorum 3), not
    # upstream's count of the other nodes (quorum 1 on two nodes: each may seed the ring alone).
    assert {"name": "IPALLOC_INIT", "value": "consensus=4"} in weave["env"]
    assert weave["image"] == "weaveworks/weave-kube:2.8.1"
    crb = docs[("ClusterRoleBinding", "kube-apiserver-kubelet-client")]
    assert crb["roleRef"]["name"] == "system:kubelet-api-admin"
    assert crb["subjects"][0]["name"] == "kube-apiserver-kubelet-client"
    corefile = docs[("ConfigMap", "coredns")]["data"]["Corefile"]
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in corefile


def test_apiserver_flags(default_path):
    unit = rendered(default_path, "master-2")["/etc/systemd/system/kube-apiserver.service"].decode()
    for flag in ("--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
                 "--encryption-provider-config=", "--audit-policy-file=", "--audit-log-path=",
                 "--service-account-issuer=https://192.168.56.30:6443",
                 "--etcd-servers=https://192.168.56.11:2379,https://192.168.56.12:2379",
                 "--advertise-address=192.168.56.12", "--service-cluster-ip-range=10.96.0.0/16",
                 "--kubelet-client-certificate="):
        assert flag in unit
    for leader in ("kube-controller-manager", "kube-scheduler"):
        assert "--leader-elect=true" in rendered(default_path, "master-1")[
            f"/etc/systemd/system/{leader}.service"].decode()


def test_audit_policy_parses(default_path):
    policy = yaml.safe_load(rendered(default_path, "master-1")["/etc/kubernetes/audit-policy.yaml"])
    assert policy["kind"] == "Policy" and policy["rules"][-1] == {"level": "Metadata"}


def test_tools_are_present():
    """The checks above need these; scripts/setup installs them. Say so loudly if not."""
    for tool in ("haproxy", "keepalived", "systemd-analyze", "openssl"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/setup"


def files_of(path, node: str):
    cluster = prepared_cluster(str(path))
    ctx = HostContext(cluster, cluster.node(node), dict(NEUTRAL_FACTS))
    return {f.dest: f for w in collect(ctx).values() for f in w.all_files()}


def test_hardening_as_the_cis_benchmark_asks(default_path):
    from kthw.context import TLS_CIPHER_SUITES
    master, worker = rendered(default_path, "master-1"), rendered(default_path, "worker-1")
    suites = ",".join(TLS_CIPHER_SUITES)
    apiserver = master["/etc/systemd/system/kube-apiserver.service"].decode()
    for unit in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        text = master[f"/etc/systemd/system/{unit}.service"].decode()
        assert "--profiling=false" in text and "--tls-min-version=VersionTLS12" in text, unit
        assert f"--tls-cipher-suites={suites} " in text, unit
    assert "--anonymous-auth" not in apiserver  # the authentication config decides
    assert "--authentication-config=/etc/kubernetes/authentication-config.yaml" in apiserver
    authn = yaml.safe_load(master["/etc/kubernetes/authentication-config.yaml"])
    assert authn["anonymous"] == {"enabled": True, "conditions": [
        {"path": "/livez"}, {"path": "/readyz"}, {"path": "/healthz"}]}
    etcd = master["/etc/systemd/system/etcd.service"].decode()
    assert "--peer-cert-allowed-cn=etcd-server " in etcd and "--tls-min-version=TLS1.2 " in etcd
    assert f"--cipher-suites={suites}\n" in etcd or f"--cipher-suites={suites} " in etcd
    kubelet = yaml.safe_load(worker["/var/lib/kubelet/kubelet-config.yaml"])
    assert kubelet["tlsMinVersion"] == "VersionTLS12" and kubelet["tlsCipherSuites"] == list(TLS_CIPHER_SUITES)
    assert files_of(default_path, "worker-1")["/var/lib/kubelet/kubelet-config.yaml"].mode == 0o600
    proxy = yaml.safe_load(worker["/var/lib/kube-proxy/kube-proxy-config.yaml"])
    assert proxy["nodePortAddresses"] == ["192.168.56.0/24"]


def test_each_etcd_member_gets_its_own_certificate(default_path):
    one, two = files_of(default_path, "master-1"), files_of(default_path, "master-2")
    for path in ("/etc/etcd/etcd-server.crt", "/etc/etcd/etcd-server.key"):
        assert one[path].sha256 != two[path].sha256
    assert one["/etc/etcd/etcd-server.key"].mode == 0o600 and one["/etc/etcd/etcd-server.key"].secret


def exec_start(files: dict, unit: str) -> list[str]:
    text = files[f"/etc/systemd/system/{unit}.service"].decode()
    block = text[text.index("ExecStart="):text.index("\nRestart=")]
    assert "\n\n" not in block.rstrip(), unit
    return [line.strip().removesuffix(" \\").strip() for line in block.rstrip().splitlines()[1:]]


def with_extra_args(tmp_path, default_path, extra: dict):
    raw = yaml.safe_load(default_path.read_text())
    raw["extra_args"] = extra
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_extra_args_replace_add_and_remove_flags(tmp_path, default_path):
    # flags as data (kthw/flags.py): a user value replaces the default where it stands (no more
    # "--v=1 ... --v=3"), a new flag comes after the defaults, null removes a default
    path = with_extra_args(tmp_path, default_path, {
        "etcd": {"log-level": "debug"}, "kube_apiserver": {"v": 4, "enable-aggregator-routing": None},
        "kube_controller_manager": {"v": 3}, "kube_scheduler": {"v": 2, "leader-elect": None}})
    files = rendered(path, "master-1")
    default = rendered(default_path, "master-1")
    for unit, changed, removed in [
            ("etcd", {}, ""), ("kube-apiserver", {"--v=1": "--v=4"}, "--enable-aggregator-routing=true"),
            ("kube-controller-manager", {"--v=1": "--v=3"}, ""),
            ("kube-scheduler", {"--v=1": "--v=2"}, "--leader-elect=true")]:
        before, after = exec_start(default, unit), exec_start(files, unit)
        assert [changed.get(f, f) for f in before if f != removed] == [f for f in after if f != "--log-level=debug"]
    assert exec_start(files, "etcd")[-1] == "--log-level=debug"
    assert "--enable-aggregator-routing=true" not in exec_start(files, "kube-apiserver")
    assert not [f for f in exec_start(files, "kube-scheduler") if f.startswith("--leader-elect")]
    assert [f for f in exec_start(files, "kube-apiserver") if f.startswith("--v=")] == ["--v=4"]
    assert "--client-cert-auth" in exec_start(files, "etcd")  # a flag without a value stays one


def test_units_with_extra_args_pass_systemd_analyze(tmp_path, default_path):
    path = with_extra_args(tmp_path, default_path, {"kube_apiserver": {"v": 4, "event-ttl": None}})
    text = rendered(path, "master-1")["/etc/systemd/system/kube-apiserver.service"].decode()
    stub = tmp_path / "kube-apiserver"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    unit_file = tmp_path / "kube-apiserver.service"
    unit_file.write_text(text.replace("/usr/local/bin/kube-apiserver", str(stub)))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", unit_file],
                         capture_output=True, text=True)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_extra_args_merge_into_the_kubelet_and_kube_proxy_configs(tmp_path, default_path):
    path = with_extra_args(tmp_path, default_path, {
        "kubelet": {"maxPods": 50, "evictionHard": {"memory.available": "200Mi"}, "runtimeRequestTimeout": None,
                    "authentication": {"webhook": {"cacheTTL": "30s"}}},
        "kube_proxy": {"mode": "nftables"}})
    files = rendered(path, "worker-1")
    kubelet = yaml.safe_load(files["/var/lib/kubelet/kubelet-config.yaml"])
    assert kubelet["maxPods"] == 50 and kubelet["evictionHard"] == {"memory.available": "200Mi"}
    assert "runtimeRequestTimeout" not in kubelet
    # a mapping merges key by key: the deploy's other authentication settings stay
    assert kubelet["authentication"]["webhook"] == {"enabled": True, "cacheTTL": "30s"}
    assert kubelet["authentication"]["anonymous"] == {"enabled": False}
    assert files["/var/lib/kubelet/kubelet-config.yaml"].startswith(b"# Managed by kthw-pyinfra")
    assert yaml.safe_load(files["/var/lib/kube-proxy/kube-proxy-config.yaml"])["mode"] == "nftables"
    # without extra_args the files are the templates' own text, byte for byte
    plain = rendered(default_path, "worker-1")["/var/lib/kubelet/kubelet-config.yaml"]
    assert b"# nobody unauthenticated talks to the kubelet" in plain


@pytest.fixture(scope="module")
def vip_path(tmp_path_factory):
    """The reference with a second load balancer sharing 192.168.56.40."""
    raw = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text())
    raw["nodes"].insert(1, {"name": "loadbalancer-2", "role": "loadbalancer", "ip": "192.168.56.31"})
    raw["network"]["api_vip"] = "192.168.56.40"
    return cluster_file(tmp_path_factory.mktemp("vip"), raw)


@pytest.mark.parametrize("node, peer, priority", [("loadbalancer", "192.168.56.31", 150),
                                                   ("loadbalancer-2", "192.168.56.30", 100)])
def test_keepalived_accepts_the_config(tmp_path, vip_path, node, peer, priority):
    text = rendered(vip_path, node, interface_of="eth1")["/etc/keepalived/keepalived.conf"].decode()
    assert re.search(r"virtual_ipaddress \{\s+192\.168\.56\.40/24 dev eth1\s+\}", text)
    assert re.search(rf"unicast_peer \{{\s+{re.escape(peer)}\s+\}}", text) and f"priority {priority}\n" in text
    assert "state BACKUP" in text and "nopreempt" in text  # the holder keeps it: no flap on a return
    # Check it as keepalived would run it, on an interface this machine has (not loopback).
    here = next(i for i in sorted(os.listdir("/sys/class/net")) if i != "lo")
    (tmp_path / "keepalived.conf").write_text(text.replace(" eth1", f" {here}"))
    out = subprocess.run(CONFIG_TEST.format(path=tmp_path / "keepalived.conf"), shell=True, capture_output=True,
                         text=True)
    said = [line for line in out.stderr.splitlines() if line.strip() not in ("", "Terminated")]  # (the shell's)
    assert out.returncode == 0 and not said, out.stdout + out.stderr
    # and the same test catches a mistake
    (tmp_path / "keepalived.conf").write_text(text.replace("advert_int", "advert_interval"))
    assert subprocess.run(CONFIG_TEST.format(path=tmp_path / "keepalived.conf"), shell=True,
                          capture_output=True).returncode != 0


def test_haproxy_on_two_load_balancers_answers_on_the_virtual_ip(tmp_path, vip_path):
    cfg = rendered(vip_path, "loadbalancer-2", interface_of="eth1")["/etc/haproxy/haproxy.cfg"].decode()
    assert re.findall(r"^\s+bind (\S+)$", cfg, re.M) == ["*:6443"]  # the VIP may arrive any moment
    (tmp_path / "haproxy.cfg").write_text(cfg.replace("bind *:6443", "bind 127.0.0.1:16443"))
    out = subprocess.run(["haproxy", "-c", "-f", tmp_path / "haproxy.cfg"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_load_balancer_whose_address_no_interface_holds_is_refused(vip_path):
    from kthw.context import DeployRefused

    with pytest.raises(DeployRefused, match="no network interface holds 192.168.56.31"):
        rendered(vip_path, "loadbalancer-2", interface_of="")


def test_pod_security_enforces_baseline_by_default_and_takes_the_cluster_files_levels(tmp_path, default_path):
    master = rendered(default_path, "master-1")
    apiserver = master["/etc/systemd/system/kube-apiserver.service"].decode()
    assert "--admission-control-config-file=/etc/kubernetes/admission-config.yaml" in apiserver
    doc = yaml.safe_load(master["/etc/kubernetes/admission-config.yaml"])
    assert doc["kind"] == "AdmissionConfiguration" and doc["apiVersion"] == "apiserver.config.k8s.io/v1"
    (plugin,) = doc["plugins"]
    config = plugin["configuration"]
    assert plugin["name"] == "PodSecurity" and config["kind"] == "PodSecurityConfiguration"
    assert config["apiVersion"] == "pod-security.admission.config.k8s.io/v1"
    assert config["defaults"] == {"enforce": "baseline", "enforce-version": "latest", "audit": "restricted",
                                  "audit-version": "latest", "warn": "restricted", "warn-version": "latest"}
    assert config["exemptions"] == {"usernames": [], "runtimeClasses": [], "namespaces": ["kube-system"]}
    raw = yaml.safe_load(default_path.read_text())
    raw["pod_security"] = {"enforce": "restricted", "exempt_namespaces": ["kube-system", "monitoring"]}
    (path := tmp_path / "cluster.yaml").write_text(yaml.safe_dump(raw))
    config = yaml.safe_load(rendered(path, "master-1")["/etc/kubernetes/admission-config.yaml"])["plugins"][0][
        "configuration"]
    assert config["defaults"]["enforce"] == "restricted" and config["defaults"]["warn"] == "restricted"
    assert config["exemptions"]["namespaces"] == ["kube-system", "monitoring"]
    # the apiserver restarts (in turn) when the levels change
    assert files_of(path, "master-1")["/etc/kubernetes/admission-config.yaml"].sha256 != files_of(
        default_path, "master-1")["/etc/kubernetes/admission-config.yaml"].sha256
