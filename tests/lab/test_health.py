"""`python -m kthw health` on the real lab: a well cluster exits 0; then one fault at a time, each
named by exactly its own failing rows (exit 1), then put right and exit 0 again.

The faults (the slow ones are day-two tests): a kubelet stopped on a worker, an apiserver stopped
(two masters or more), an etcd member stopped (three members or more, where the others keep
quorum), CoreDNS scaled to 0, the pod network cut between two workers (Weave Net: their port 6783
dropped; bridge: a route deleted), the entrance's HAProxy stopped, every scheduler stopped (its
lease lapses), a worker lost without notice (the reference topology); and, without a fault, a
renewal window wider than any certificate's life and a maximum snapshot age of 0.
"""

from __future__ import annotations

import sys

import pytest

from tests.lab.lab import Lab, reference_only, sh

DRILL = "kthw-health-drill"  # the comment on the iptables rules a drill adds


def run_health(lab: Lab, *args: str) -> tuple[int, list[tuple[str, str, str, str]], str]:
    """Exit code, rows (check, subject, status, detail) and the whole output."""
    out = sh([sys.executable, "-m", "kthw", "health", *args], env=lab.env, check=False, timeout=300)
    lines = out.stdout.splitlines()
    rows = []
    if lines and lines[0].startswith("CHECK"):
        at = [lines[0].index(c) for c in ("SUBJECT", "STATUS", "DETAIL")]
        rows = [(ln[:at[0]].strip(), ln[at[0]:at[1]].strip(), ln[at[1]:at[2]].strip(), ln[at[2]:])
                for ln in lines[1:-1]]
    return out.returncode, rows, out.stdout + out.stderr


def failing(rows) -> set[tuple[str, str]]:
    return {(check, subject) for check, subject, status, _ in rows if status == "FAIL"}


def until_failing(lab: Lab, expected: set[tuple[str, str]], what: str, *args: str, timeout: float = 300):
    """Wait until health exits 1 and fails exactly ``expected``; the rows then."""
    def named():
        code, rows, text = run_health(lab, *args)
        assert code == 1 and failing(rows) == expected, f"exit {code}, failing {sorted(failing(rows))}:\n{text}"
        return rows
    return lab.wait(f"health to name {what}", named, timeout=timeout, interval=5)


def until_well(lab: Lab, timeout: float = 300) -> list:
    def well():
        code, rows, text = run_health(lab)
        assert code == 0 and not failing(rows), f"exit {code}:\n{text}"
        return rows
    return lab.wait("health to exit 0", well, timeout=timeout, interval=5)


def test_a_well_cluster_exits_0_and_prints_nothing_secret(lab):
    rows = until_well(lab, timeout=180)
    checks = {check for check, *_ in rows}
    assert {"ssh", "services", "nodes", "etcd", "apiserver", "api proxy", "leases", "dns", "pod network",
            "certificates", "snapshot"} <= checks
    _, _, text = run_health(lab)
    assert "PRIVATE KEY" not in text and "client-key-data" not in text
    weave_password = lab.cluster.pki_dir / "weave-password"
    if weave_password.exists():
        assert weave_password.read_text().strip() not in text


def test_the_certificate_window_and_the_snapshot_age_are_the_operators_to_set(lab):
    holders = {n.name for n in lab.cluster.nodes if n.holds_certificates}
    until_failing(lab, {("certificates", n) for n in holders}, "every certificate due", "--within", "100000",
                  timeout=60)
    until_failing(lab, {("snapshot", "etcd")}, "the snapshot too old", "--snapshot-max-age", "0", timeout=60)


@pytest.mark.day_two
def test_a_stopped_kubelet(lab):
    worker = lab.cluster.workers[0].name
    try:
        lab.ssh(worker, "systemctl stop kubelet")
        rows = until_failing(lab, {("services", worker), ("nodes", worker)}, f"{worker}'s kubelet")
        assert any(c == "services" and "kubelet inactive" in d for c, s, _, d in rows if s == worker), rows
    finally:
        lab.ssh(worker, "systemctl start kubelet", check=False)
    until_well(lab)


@pytest.mark.day_two
def test_a_stopped_apiserver(lab):
    if len(lab.cluster.masters) < 2:
        pytest.skip("one master: its apiserver stopped stops every check that reads the cluster")
    master = lab.cluster.masters[0].name
    try:
        lab.ssh(master, "systemctl stop kube-apiserver")
        until_failing(lab, {("services", master), ("apiserver", master)}, f"{master}'s apiserver")
    finally:
        lab.ssh(master, "systemctl start kube-apiserver", check=False)
    until_well(lab)


@pytest.mark.day_two
def test_a_stopped_etcd_member(lab):
    if len(lab.cluster.etcd_members) < 3:
        pytest.skip("two etcd members: one stopped takes the quorum, and with it every check that reads the cluster")
    member = lab.cluster.etcd_members[-1].name
    try:
        lab.ssh(member, "systemctl stop etcd")
        rows = until_failing(lab, {("services", member), ("etcd", member)}, f"{member}'s etcd member")
        count = len(lab.cluster.etcd_members)
        cluster_row = next(d for c, s, _, d in rows if (c, s) == ("etcd", "cluster"))
        assert f"{count - 1} of {count} members healthy" in cluster_row
    finally:
        lab.ssh(member, "systemctl start etcd", check=False)
    until_well(lab)


@pytest.mark.day_two
def test_coredns_scaled_to_zero(lab):
    replicas = lab.kubectl("-n", "kube-system", "get", "deployment", "coredns", "-o", "jsonpath={.spec.replicas}")
    try:
        lab.kubectl("-n", "kube-system", "scale", "deployment", "coredns", "--replicas=0")
        until_failing(lab, {("dns", "kube-dns endpoints"), ("dns", f"query {lab.cluster.cluster_dns}")}, "CoreDNS")
    finally:
        lab.kubectl("-n", "kube-system", "scale", "deployment", "coredns", f"--replicas={replicas}", check=False)
    until_well(lab)


def _weave_cut(peer: str, add: bool) -> str:
    """iptables rules on one node dropping Weave Net's ports (6783 control and sleeve, 6784 fast
    datapath) to and from ``peer``."""
    op = "-I" if add else "-D"
    return "; ".join(f"iptables {op} {chain} {flag} {peer} -p {proto} -m multiport --ports 6783,6784 "
                     f"-m comment --comment {DRILL} -j DROP"
                     for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")) for proto in ("tcp", "udp"))


@pytest.mark.day_two
def test_the_pod_network_cut_between_two_workers(lab):
    a, b = lab.cluster.workers[0], lab.cluster.workers[1]
    if lab.cluster.cni == "weave":
        try:
            lab.ssh(a.name, _weave_cut(str(b.ip), add=True))
            rows = until_failing(lab, {("pod network", a.name), ("pod network", b.name)},
                                 f"the Weave connection between {a.name} and {b.name}", timeout=420)
            details = {s: d for c, s, _, d in rows if c == "pod network"}
            assert b.name in details[a.name] and a.name in details[b.name], details
        finally:
            lab.ssh(a.name, _weave_cut(str(b.ip), add=False), check=False)
        until_well(lab, timeout=600)  # Weave Net retries a failed peer with a growing pause
    else:
        try:
            lab.ssh(a.name, f"ip route del {b.pod_cidr}")
            rows = until_failing(lab, {("pod network", a.name)}, f"{a.name}'s route to {b.name}'s pods")
            assert str(b.pod_cidr) in next(d for c, s, _, d in rows if (c, s) == ("pod network", a.name))
        finally:
            lab.ssh(a.name, "systemctl restart kthw-pod-network", check=False)
        until_well(lab)


@pytest.mark.day_two
def test_the_entrance_stopped(lab):
    if lab.cluster.api_vip:
        pytest.skip("two load balancers: the other one takes the entrance")
    lb = lab.cluster.loadbalancer
    try:
        lab.ssh(lb.name, "systemctl stop haproxy")
        until_failing(lab, {("services", lb.name), ("apiserver", f"entrance {lb.ip}:6443")}, "the entrance",
                      timeout=120)
    finally:
        lab.ssh(lb.name, "systemctl start haproxy", check=False)
    until_well(lab)


@pytest.mark.day_two
def test_no_scheduler_leads(lab):
    masters = [m.name for m in lab.cluster.masters]
    try:
        for m in masters:
            lab.ssh(m, "systemctl stop kube-scheduler")
        until_failing(lab, {("services", m) for m in masters} | {("leases", "kube-scheduler")},
                      "the scheduler's lapsed lease", timeout=120)
    finally:
        for m in masters:
            lab.ssh(m, "systemctl start kube-scheduler", check=False)
    until_well(lab)


@pytest.mark.day_two
def test_a_worker_lost_without_notice(lab):
    """A machine that does not answer is a row naming it, never a crash: its ssh row, its Node, and
    (Weave Net) every other node's connection to it."""
    reference_only(lab)
    worker = lab.cluster.workers[-1].name
    others = {n.name for n in lab.cluster.kubelet_nodes if n.name != worker}
    try:
        sh(["lxc-stop", "--kill", "-n", f"kthw-{worker}"])
        rows = until_failing(lab, {("ssh", worker), ("nodes", worker)} | {("pod network", n) for n in others},
                             f"{worker} lost")
        assert all(worker in d for c, s, st, d in rows if st == "FAIL" and c == "pod network"), rows
    finally:
        sh(["lxc-start", "-n", f"kthw-{worker}"])
        lab.refresh_ssh_config(worker)
    until_well(lab, timeout=600)
