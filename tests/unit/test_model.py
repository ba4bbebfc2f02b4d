"""The cluster model: defaults reproduce the reference, and every validation rule bites."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from kthw.model import ClusterConfigError, load_cluster, parse_cluster
from tests.conftest import scaled


def problems(raw) -> list[str]:
    with pytest.raises(ClusterConfigError) as info:
        parse_cluster(raw)
    return [str(p) for p in info.value.problems]


def only_problem(raw) -> str:
    found = problems(raw)
    assert len(found) == 1, found
    assert "Fix:" in found[0]
    return found[0]


# --------------------------------------------------------------------------- defaults


def test_defaults_reproduce_the_reference_topology():
    c = load_cluster()
    assert [(n.name, n.role, str(n.ip)) for n in c.nodes] == [
        ("loadbalancer", "loadbalancer", "192.168.56.30"),
        ("master-1", "master", "192.168.56.11"),
        ("master-2", "master", "192.168.56.12"),
        ("worker-1", "worker", "192.168.56.21"),
        ("worker-2", "worker", "192.168.56.22"),
    ]
    assert c.node_network == IPv4Network("192.168.56.0/24")
    assert c.pod_network == IPv4Network("10.244.0.0/16")
    assert c.service_network == IPv4Network("10.96.0.0/16")
    assert c.api_service_ip == IPv4Address("10.96.0.1")
    assert c.cluster_dns == IPv4Address("10.96.0.10")
    assert c.domain == "cluster.local"
    assert c.cni == "weave"
    assert c.api_server_url == "https://192.168.56.30:6443"
    assert c.etcd_initial_cluster == (
        "master-1=https://192.168.56.11:2380,master-2=https://192.168.56.12:2380"
    )
    assert [str(w.pod_cidr) for w in c.workers] == ["10.244.0.0/24", "10.244.1.0/24"]
    # Masters are nodes too: their subnets come from the end of the range, so adding workers
    # never moves a master's (and the reverse).
    assert [str(m.pod_cidr) for m in c.masters] == ["10.244.255.0/24", "10.244.254.0/24"]
    assert c.loadbalancer.pod_cidr is None


def test_any_count_of_masters_and_workers():
    c = parse_cluster(scaled(3, 20))
    assert len(c.masters) == 3 and len(c.workers) == 20
    assert len({w.pod_cidr for w in c.workers}) == 20
    assert c.warnings == ()


def test_two_masters_warn_that_etcd_tolerates_no_loss():
    c = load_cluster()
    assert len(c.warnings) == 1
    assert "losing either master stops all writes" in c.warnings[0]


def test_four_masters_warn_too():
    c = parse_cluster(scaled(4, 1))
    assert "quorum is 3" in c.warnings[0]


def test_the_warning_names_the_etcd_only_member_and_that_silences_it(raw_cluster):
    assert "etcd: true on its entry" in load_cluster().warnings[0]
    raw_cluster["nodes"][0]["etcd"] = True  # the load balancer
    c = parse_cluster(raw_cluster)
    assert c.warnings == ()
    assert [m.name for m in c.etcd_members] == ["master-1", "master-2", "loadbalancer"]
    assert c.etcd_initial_cluster.endswith(",loadbalancer=https://192.168.56.30:2380")
    assert c.etcd_servers.count("https://") == 3
    assert c.loadbalancer.runs_etcd and not c.loadbalancer.runs_kubelet


@pytest.mark.parametrize("index, expected", [
    (1, "nodes[1] (master-1).etcd = 'true': is only meaningful on a load balancer (masters always run etcd)"),
    (3, "nodes[3] (worker-1).etcd = 'true': is only meaningful on a load balancer (workers never run etcd)"),
])
def test_an_etcd_only_member_goes_on_a_load_balancer_only(raw_cluster, index, expected):
    raw_cluster["nodes"][index]["etcd"] = True
    assert only_problem(raw_cluster).startswith(expected)


def test_an_etcd_only_member_that_would_make_the_count_even_is_refused():
    raw = scaled(3, 1)
    next(n for n in raw["nodes"] if n["role"] == "loadbalancer")["etcd"] = True
    msg = only_problem(raw)
    assert "would make 4 etcd members with 3 masters" in msg and "Fix: remove it" in msg


def test_explicit_pod_cidr_is_kept(raw_cluster):
    raw_cluster["nodes"][4]["pod_cidr"] = "10.244.7.0/24"
    c = parse_cluster(raw_cluster)
    assert str(c.node("worker-2").pod_cidr) == "10.244.7.0/24"


def test_missing_file_names_the_env_variable(tmp_path):
    with pytest.raises(ClusterConfigError) as info:
        load_cluster(tmp_path / "nope.yaml")
    assert "KTHW_CLUSTER" in str(info.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cluster:\n  name: [oops\n")
    with pytest.raises(ClusterConfigError) as info:
        load_cluster(path)
    assert "line" in str(info.value)


# --------------------------------------------------------------------------- one test per rule


def test_malformed_ip(raw_cluster):
    raw_cluster["nodes"][1]["ip"] = "192.168.56.300"
    msg = only_problem(raw_cluster)
    assert msg.startswith("nodes[1] (master-1).ip = '192.168.56.300': is not an IPv4 address")


def test_malformed_cidr(raw_cluster):
    raw_cluster["network"]["pods"] = "10.244.0.0/33"
    assert only_problem(raw_cluster).startswith("network.pods = '10.244.0.0/33'")


def test_cidr_with_host_bits(raw_cluster):
    raw_cluster["network"]["services"] = "10.96.0.1/16"
    msg = only_problem(raw_cluster)
    assert "network.services" in msg and "host bits" in msg and "10.244.0.0/16" in msg


def test_node_ip_outside_node_network(raw_cluster):
    raw_cluster["nodes"][3]["ip"] = "192.168.57.21"
    msg = only_problem(raw_cluster)
    assert msg.startswith("nodes[3] (worker-1).ip = '192.168.57.21': is outside network.nodes")


def test_node_ip_is_host_side_of_the_network(raw_cluster):
    raw_cluster["nodes"][3]["ip"] = "192.168.56.1"
    assert "Vagrant" in only_problem(raw_cluster)


def test_duplicate_names(raw_cluster):
    raw_cluster["nodes"][4]["name"] = "worker-1"
    assert only_problem(raw_cluster).startswith("nodes[].name = 'worker-1': is used by 2 nodes")


def test_duplicate_ips(raw_cluster):
    raw_cluster["nodes"][4]["ip"] = "192.168.56.21"
    assert only_problem(raw_cluster).startswith("nodes[].ip = '192.168.56.21': is used by 2 nodes")


def test_invalid_node_name(raw_cluster):
    raw_cluster["nodes"][3]["name"] = "Worker_1"
    assert "is not a valid name" in only_problem(raw_cluster)


@pytest.mark.parametrize(
    "key,value,other",
    [
        ("pods", "192.168.0.0/16", "network.nodes"),
        ("services", "10.244.128.0/20", "network.pods"),
        ("services", "192.168.56.0/28", "network.nodes"),
    ],
)
def test_overlapping_networks(raw_cluster, key, value, other):
    raw_cluster["network"][key] = value
    if key == "services":
        raw_cluster["network"]["cluster_dns"] = str(IPv4Network(value).network_address + 10)
    msg = " | ".join(problems(raw_cluster))
    assert f"network.{key} = '{value}': overlaps {other}" in msg


def test_dns_ip_outside_service_cidr(raw_cluster):
    raw_cluster["network"]["cluster_dns"] = "10.97.0.10"
    msg = only_problem(raw_cluster)
    assert msg.startswith("network.cluster_dns = '10.97.0.10': is outside network.services")
    assert "10.96.0.10" in msg


def test_dns_ip_is_the_api_service_ip(raw_cluster):
    raw_cluster["network"]["cluster_dns"] = "10.96.0.1"
    assert "API service IP" in only_problem(raw_cluster)


def test_no_master(raw_cluster):
    raw_cluster["nodes"] = [n for n in raw_cluster["nodes"] if n["role"] != "master"]
    assert only_problem(raw_cluster).startswith("nodes: has no node with role: master")


def test_no_worker(raw_cluster):
    raw_cluster["nodes"] = [n for n in raw_cluster["nodes"] if n["role"] != "worker"]
    assert only_problem(raw_cluster).startswith("nodes: has no node with role: worker")


def test_exactly_one_loadbalancer(raw_cluster):
    raw_cluster["nodes"] = [n for n in raw_cluster["nodes"] if n["role"] != "loadbalancer"]
    assert "needs one (or two sharing network.api_vip)" in only_problem(raw_cluster)


def test_unknown_role(raw_cluster):
    raw_cluster["nodes"][3]["role"] = "minion"
    msg = only_problem(raw_cluster)
    assert "nodes[3] (worker-1).role = 'minion'" in msg and "'worker'" in msg


def test_unknown_top_level_key_suggests_the_right_one(raw_cluster):
    raw_cluster["netwrok"] = raw_cluster.pop("network")
    msg = only_problem(raw_cluster)
    assert msg.startswith("netwrok: is not a known key")
    assert "did you mean `network`?" in msg


def test_unknown_nested_key_suggests_the_right_one(raw_cluster):
    raw_cluster["nodes"][2]["memroy"] = 2048
    msg = only_problem(raw_cluster)
    assert msg.startswith("nodes[2] (master-2).memroy: is not a known key")
    assert "did you mean `memory`?" in msg


def test_unknown_cni(raw_cluster):
    raw_cluster["cni"] = "calico"
    msg = only_problem(raw_cluster)
    assert msg.startswith("cni = 'calico'") and "'weave' or 'bridge'" in msg


def test_malformed_version(raw_cluster):
    raw_cluster["versions"]["kubernetes"] = "1.36"
    msg = only_problem(raw_cluster)
    assert msg.startswith("versions.kubernetes = '1.36': is not a release version")
    assert "v1.36.3" in msg


def test_unquoted_short_version_is_explained(raw_cluster):
    raw_cluster["versions"]["pause"] = 3.10
    assert "YAML reads 3.10 as the number 3.1" in only_problem(raw_cluster)


def test_missing_required_key(raw_cluster):
    del raw_cluster["versions"]["etcd"]
    assert only_problem(raw_cluster).startswith("versions.etcd: is required but missing")


def test_too_few_pod_subnets_for_the_workers():
    raw = scaled(1, 5)
    raw["network"]["pods"] = "10.244.0.0/22"
    assert "gives only 4 per-node subnets" in only_problem(raw)


def test_pod_cidr_outside_pod_network(raw_cluster):
    raw_cluster["nodes"][3]["pod_cidr"] = "10.245.0.0/24"
    assert "is not inside network.pods" in only_problem(raw_cluster)


def test_mirror_needs_a_url(raw_cluster):
    raw_cluster["artifacts"] = {"source": "mirror"}
    assert only_problem(raw_cluster).startswith("artifacts.mirror_url: is required")


def test_setting_ignored_by_upstream_source(raw_cluster):
    raw_cluster["artifacts"] = {"directory": "/srv/x"}
    assert "would be ignored" in only_problem(raw_cluster)


def test_renewal_window_longer_than_validity(raw_cluster):
    raw_cluster["pki"]["renew_before_days"] = 400
    assert only_problem(raw_cluster).startswith("pki.renew_before_days = 400")


def test_all_problems_are_reported_at_once(raw_cluster):
    raw_cluster["nodes"][4]["ip"] = "192.168.56.21"
    raw_cluster["network"]["cluster_dns"] = "10.97.0.10"
    raw_cluster["nodes"] = [n for n in raw_cluster["nodes"] if n["role"] != "master"]
    assert len(problems(raw_cluster)) == 3


def test_error_header_says_nothing_was_touched(raw_cluster):
    raw_cluster["cni"] = "flannel"
    with pytest.raises(ClusterConfigError) as info:
        parse_cluster(raw_cluster)
    assert "nothing was changed on any host" in str(info.value)


def test_registry_mirrors_are_kept(raw_cluster):
    raw_cluster["artifacts"] = {"registry_mirrors": {"registry.k8s.io": ["http://192.168.56.1:5000"]}}
    assert parse_cluster(raw_cluster).artifacts.registry_mirrors == {"registry.k8s.io": ["http://192.168.56.1:5000"]}


@pytest.mark.parametrize("mirrors, expected", [
    ({"Registry K8s": ["http://m:5000"]}, "is not a registry host name"),
    ({"registry.k8s.io": ["ftp://m"]}, "registry.k8s.io[0] = 'ftp://m': is not an http(s):// URL"),
    ({"registry.k8s.io": []}, "registry.k8s.io = []: is empty"),
    ({"registry.k8s.io": "http://m:5000"}, "must be a list"),
])
def test_bad_registry_mirrors(raw_cluster, mirrors, expected):
    raw_cluster["artifacts"] = {"registry_mirrors": mirrors}
    problem = only_problem(raw_cluster)
    assert problem.startswith("artifacts.registry_mirrors.") and expected in problem


def test_extra_args_are_kept_as_given(raw_cluster):
    raw_cluster["extra_args"] = {"kube_apiserver": {"v": 2, "audit-log-maxage": "7", "profiling": False,
                                                    "event-ttl": None},
                                 "kubelet": {"maxPods": 50, "evictionHard": {"memory.available": "200Mi"}}}
    args = parse_cluster(raw_cluster).extra_args
    assert args.kube_apiserver == {"v": "2", "audit-log-maxage": "7", "profiling": "false", "event-ttl": None}
    assert args.kubelet == {"maxPods": 50, "evictionHard": {"memory.available": "200Mi"}}
    assert args.etcd == {}


def test_removing_a_flag_the_deploy_does_not_set_is_an_error(raw_cluster):
    raw_cluster["extra_args"] = {"kube_scheduler": {"no-such-flag": None}}
    problem = only_problem(raw_cluster)
    assert problem.startswith("extra_args.kube_scheduler.no-such-flag = None: removes --no-such-flag, but the deploy")


@pytest.mark.parametrize("given, expected", [
    ({"kube_scheduler": {"--v": 3}}, "extra_args.kube_scheduler.--v = 3: is not a flag name"),
    ({"kube_scheduler": {"v": "a b"}}, "extra_args.kube_scheduler.v = 'a b': is not a single word"),
    ({"kubelet": {"max-pods": 1}}, "extra_args.kubelet.max-pods = 1: is not a configuration key"),
    ({"kubeproxy": {"mode": "ipvs"}}, "extra_args.kubeproxy: is not a known key"),
])
def test_bad_extra_args(raw_cluster, given, expected):
    raw_cluster["extra_args"] = given
    assert only_problem(raw_cluster).startswith(expected)


def test_pod_subnets_stay_with_their_node_when_others_come_and_go(tmp_path):
    """Assigned by name and kept (the deploy records them): removing worker-1 leaves worker-2's
    subnet where it was, and a newcomer takes a free one."""
    import yaml as _yaml

    from kthw.model import DEFAULT_CLUSTER_FILE, load_cluster, record_pod_subnets
    from tests.conftest import scaled

    raw = scaled(2, 3, _yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()))
    raw["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "cluster.yaml"
    path.write_text(_yaml.safe_dump(raw))
    first = {n.name: n.pod_cidr for n in load_cluster(path).kubelet_nodes}
    record_pod_subnets(load_cluster(path))
    raw["nodes"] = [n for n in raw["nodes"] if n["name"] != "worker-1"]
    path.write_text(_yaml.safe_dump(raw))
    after = {n.name: n.pod_cidr for n in load_cluster(path).kubelet_nodes}
    assert after == {k: v for k, v in first.items() if k != "worker-1"}
    record_pod_subnets(load_cluster(path))
    raw["nodes"].append({"name": "worker-9", "role": "worker", "ip": "192.168.56.109", "cpus": 1, "memory": 1024})
    path.write_text(_yaml.safe_dump(raw))
    grown = {n.name: n.pod_cidr for n in load_cluster(path).kubelet_nodes}
    assert {k: v for k, v in grown.items() if k != "worker-9"} == after
    assert grown["worker-9"] == first["worker-1"]  # the freed subnet, the first free slot
    assert len(set(grown.values())) == len(grown)


# Findings of issue #19: values that reached a command line or a config unchecked.
@pytest.mark.parametrize("domain", ["cluster..local", ".cluster.local", "cluster.local.", "Cluster.Local",
                                    "cluster.-local"])
def test_a_domain_with_an_empty_or_bad_label_is_refused(raw_cluster, domain):
    raw_cluster["cluster"]["domain"] = domain
    assert "cluster.domain" in (p := only_problem(raw_cluster)) and "is not a DNS name" in p


def test_a_dotted_domain_is_accepted(raw_cluster):
    raw_cluster["cluster"]["domain"] = "k8s.corp.example"
    assert parse_cluster(raw_cluster).domain == "k8s.corp.example"


@pytest.mark.parametrize("field, value, expected", [
    ("user", "-oProxyCommand=touch /tmp/x", "is not a user name"),
    ("user", "root;id", "is not a user name"),
    ("user", "ubuntu root", "is not a user name"),
    ("host", "-oProxyCommand=touch /tmp/x", "is not a host name or IP address"),
    ("host", "10.0.0.1 -v", "is not a host name or IP address"),
    ("host", "$(id)", "is not a host name or IP address"),
])
def test_ssh_user_and_host_that_could_inject_are_refused(raw_cluster, field, value, expected):
    raw_cluster["nodes"][1]["ssh"] = {"host": "10.0.0.11", "user": "ubuntu", field: value}
    problem = only_problem(raw_cluster)
    assert problem.startswith(f"nodes[1] (master-1).ssh.{field}") and expected in problem


def test_ordinary_ssh_values_are_accepted(raw_cluster):
    raw_cluster["nodes"][1]["ssh"] = {"host": "node-1.example.com", "user": "ubuntu", "key": "~/.ssh/id_ed25519"}
    raw_cluster["nodes"][2]["ssh"] = {"host": "10.0.0.12", "user": "kthw_admin"}
    c = parse_cluster(raw_cluster)
    assert c.node("master-1").ssh.host == "node-1.example.com" and c.node("master-2").ssh.user == "kthw_admin"


def test_plain_http_mirrors_are_warned_about(raw_cluster):
    # finding 6: images and release files through plain http, and nothing said so
    raw_cluster["artifacts"] = {"registry_mirrors": {"registry.k8s.io": ["http://mirror.lan:5000"],
                                                     "docker.io": ["https://mirror.lan"]},
                                "source": "mirror", "mirror_url": "http://files.lan/kthw"}
    warnings = parse_cluster(raw_cluster).warnings
    assert any(w.startswith("artifacts.registry_mirrors.registry.k8s.io: http://mirror.lan:5000 is plain http")
               for w in warnings)
    assert not any("docker.io" in w for w in warnings)
    assert any(w.startswith("artifacts.mirror_url: http://files.lan/kthw is plain http") for w in warnings)


def with_second_load_balancer(raw, vip="192.168.56.40"):
    raw["nodes"].insert(1, {"name": "loadbalancer-2", "role": "loadbalancer", "ip": "192.168.56.31"})
    if vip:
        raw["network"]["api_vip"] = vip
    return raw


def test_two_load_balancers_share_a_virtual_ip(raw_cluster):
    c = parse_cluster(with_second_load_balancer(raw_cluster))
    assert [lb.name for lb in c.loadbalancers] == ["loadbalancer", "loadbalancer-2"]
    assert c.api_server_url == "https://192.168.56.40:6443"  # the operator's entrance
    # tokens keep their issuer: the first load balancer's URL, as before the second came
    assert c.service_account_issuer == "https://192.168.56.30:6443"
    assert {str(lb.api_vip) for lb in c.loadbalancers} == {"192.168.56.40"}
    assert not [n for n in c.nodes if n.role != "loadbalancer" and n.api_vip]


@pytest.mark.parametrize("vip, expected", [
    (None, "network.api_vip: is needed with two load balancers"),
    ("192.168.56.31", "network.api_vip = '192.168.56.31': is loadbalancer-2's address"),
    ("192.168.57.40", "network.api_vip = '192.168.57.40': is not a free host address of network.nodes"),
    ("192.168.56.1", "network.api_vip = '192.168.56.1': is not a free host address of network.nodes"),
])
def test_a_bad_virtual_ip_is_refused(raw_cluster, vip, expected):
    assert only_problem(with_second_load_balancer(raw_cluster, vip)).startswith(expected)


def test_a_virtual_ip_needs_two_load_balancers(raw_cluster):
    raw_cluster["network"]["api_vip"] = "192.168.56.40"
    assert "needs two nodes with role: loadbalancer, the file has 1" in only_problem(raw_cluster)


def test_three_load_balancers_are_refused(raw_cluster):
    with_second_load_balancer(raw_cluster)
    raw_cluster["nodes"].insert(1, {"name": "loadbalancer-3", "role": "loadbalancer", "ip": "192.168.56.32"})
    assert "has 3 nodes with role: loadbalancer" in "\n".join(problems(raw_cluster))


@pytest.mark.parametrize("given, expected", [
    ({"enforce": "strict"}, "pod_security.enforce = 'strict': "),
    ({"warn": None}, "pod_security.warn = None: "),
    ({"exempt_namespaces": ["Kube_System"]},
     "pod_security.exempt_namespaces[0] = 'Kube_System': is not a namespace name"),
    ({"enforced": "baseline"}, "pod_security.enforced: is not a known key"),
])
def test_bad_pod_security_levels(raw_cluster, given, expected):
    raw_cluster["pod_security"] = given
    assert only_problem(raw_cluster).startswith(expected), only_problem(raw_cluster)

# --------------------------------------------------------------------------- scheduled snapshots


def test_scheduled_snapshots_are_on_by_default_every_6h_keeping_8(raw_cluster):
    raw_cluster.pop("backup", None)
    backup = parse_cluster(raw_cluster).backup
    assert (backup.scheduled, backup.every, backup.keep, backup.seconds) == (True, "6h", 8, 21600)
    raw_cluster["backup"] = {"every": "15min", "keep": 3}
    assert parse_cluster(raw_cluster).backup.seconds == 900
    raw_cluster["backup"] = {"scheduled": False}
    assert parse_cluster(raw_cluster).backup.scheduled is False


@pytest.mark.parametrize("given, expected", [
    ({"every": "7min"}, "backup.every = '7min': does not divide an hour evenly. Fix: use one of 1min, 2min, 3min, "
                        "4min, 5min, 6min, 10min, 12min, 15min, 20min, 30min, or hours (1h to 24h)."),
    ({"every": "5h"}, "backup.every = '5h': does not divide a day evenly. Fix: use one of 1h, 2h, 3h, 4h, 6h, 8h, "
                      "12h, 24h, or minutes (1min to 30min)."),
    ({"every": "120min"}, "backup.every = '120min': does not divide an hour evenly. Fix: write it in hours: 2h."),
    ({"every": "6 hours"}, "backup.every = '6 hours': is not an interval like 6h or 15min"),
    ({"every": "OnCalendar=daily"}, "backup.every = 'OnCalendar=daily': is not an interval like 6h or 15min"),
    ({"every": 6}, "backup.every = 6: is not an interval with its unit. Fix: write it like 6h or 15min."),
    ({"keep": 0}, "backup.keep = 0: must keep at least one snapshot. Fix: give a count of 1 or more; to take none, "
                  "set backup.scheduled: false."),
    ({"keep": "all"}, "backup.keep = 'all': is not a whole number"),
    ({"scheduled": "sometimes"}, "backup.scheduled = 'sometimes': must be true or false"),
    ({"evry": "6h"}, "backup.evry: is not a known key. Fix: did you mean `every`?"),
])
def test_a_bad_snapshot_schedule_is_refused_naming_the_key(raw_cluster, given, expected):
    raw_cluster["backup"] = given
    assert only_problem(raw_cluster).startswith(expected)
