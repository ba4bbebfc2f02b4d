"""A dry run on real nodes: it writes nothing anywhere, and it lists exactly the files the real
run then changes (fresh nodes, and a running cluster that drifted)."""

from __future__ import annotations

import re

from tests.lab.lab import BOOKKEEPING, ROOTS, RUNTIME_STATE, Lab, tree_changes


def per_node(lab: Lab, before: dict, after: dict, **kw) -> dict[str, dict[str, str]]:
    return {node: changes for node in before if (changes := tree_changes(before[node], after[node], **kw))}


def test_dry_run_on_fresh_nodes_writes_nothing(lab):
    # every file, directory and symlink under /etc, /var/lib, /usr/local, /opt: content, mode,
    # owner and mtime, on every node
    assert per_node(lab, lab.record["fresh"], lab.record["after dry run"]) == {}


def test_dry_run_on_fresh_nodes_lists_exactly_the_files_the_real_run_changed(lab):
    changed = {node: set(changes) for node, changes in per_node(
        lab, lab.record["fresh"], lab.record["deployed"], ignore=RUNTIME_STATE + BOOKKEEPING,
        files_only=True, with_mtime=False).items()}
    listed = {node: paths for node, paths in lab.record["listed"].items() if paths}
    differences = {node: {"changed, not listed": sorted(changed.get(node, set()) - listed.get(node, set())),
                          "listed, not changed": sorted(listed.get(node, set()) - changed.get(node, set()))}
                   for node in set(changed) | set(listed) if changed.get(node) != listed.get(node)}
    assert differences == {}, {n: {**d, "how": per_node(lab, lab.record["fresh"], lab.record["deployed"]).get(n, {})
                                   and {p: per_node(lab, lab.record["fresh"], lab.record["deployed"])[n].get(p)
                                        for p in d["changed, not listed"] + d["listed, not changed"]}}
                               for n, d in differences.items()}
    assert "(secret, content not shown)" in lab.record["dry text"]
    assert "PRIVATE KEY" not in lab.record["dry text"] and "client-key-data" not in lab.record["dry text"]


def test_drift_is_previewed_read_only_and_exactly_what_the_repair_changes(lab):
    """Several files of one operation (etcd's certificate and key), a secret kubeconfig, a mode,
    an owner and an ordinary config drift; the dry run shows each (secrets named, not shown),
    changes nothing, and the repair run changes exactly those files."""
    master, lb, worker = lab.cluster.masters[0].name, lab.cluster.loadbalancer.name, lab.cluster.workers[0].name
    # PEM readers skip text after the END line, so the services keep working meanwhile.
    lab.ssh(master, "echo '# drift' >> /etc/etcd/etcd-server.crt && echo '# drift' >> /etc/etcd/etcd-server.key"
                    " && chmod 640 /var/lib/kubernetes/pki/ca.crt"
                    " && chown nobody /etc/kubernetes/audit-policy.yaml")
    lab.ssh(lb, "echo '# local edit' >> /etc/haproxy/haproxy.cfg")
    lab.ssh(worker, "echo '# local edit' >> /var/lib/kubelet/kubeconfig")
    drifted = {master: {"/etc/etcd/etcd-server.crt", "/etc/etcd/etcd-server.key", "/var/lib/kubernetes/pki/ca.crt",
                        "/etc/kubernetes/audit-policy.yaml"},
               lb: {"/etc/haproxy/haproxy.cfg"}, worker: {"/var/lib/kubelet/kubeconfig"}}

    before = lab.scan(ROOTS, skip=RUNTIME_STATE)
    listed, text = lab.dry_run_listing()
    after_dry = lab.scan(ROOTS, skip=RUNTIME_STATE)
    assert per_node(lab, before, after_dry) == {}  # read-only, mtimes included
    assert {n: p for n, p in listed.items() if p} == drifted
    assert re.search(r"Will modify /etc/haproxy/haproxy.cfg\n(  .*\n)*\s+- # local edit\n", text)  # diff shown...
    assert "Will modify /var/lib/kubelet/kubeconfig\n" in text  # ...the secret is named...
    assert "(secret, content not shown)" in text
    assert "client-key-data" not in text and "PRIVATE KEY" not in text  # ...never shown
    assert "mode 640" in text and "mode 644" in text and "chown nobody:root" in text

    lab.deploy(label="repair run")
    after = lab.scan(ROOTS, skip=RUNTIME_STATE)
    changed = per_node(lab, after_dry, after, ignore=BOOKKEEPING, files_only=True, with_mtime=False)
    assert {n: set(c) for n, c in changed.items()} == drifted
    assert "# local edit" not in lab.ssh(lb, "cat /etc/haproxy/haproxy.cfg")
    assert lab.ssh(worker, "stat -c %a /var/lib/kubelet/kubeconfig").strip() == "600"
    lab.served_through_load_balancer()
