"""reset.py takes every machine back to before the deploy, says what it removed, keeps the local
PKI; a deploy afterwards builds a working cluster again."""

from __future__ import annotations

import sys

from kthw import components, paths
from tests.lab.lab import reference_only
from tests.lab.test_cluster import smoke_image


def test_reset_removes_the_cluster_and_a_fresh_deploy_works(lab):
    reference_only(lab)
    pki = {p.name: p.read_bytes() for p in lab.cluster.pki_dir.glob("*") if p.is_file()}
    out = lab.timed("reset", [sys.executable, "-m", "pyinfra", "-y", "inventory.py", "reset.py"])
    text = out.stdout + out.stderr
    for n in lab.cluster.nodes:
        assert f"[{n.name}] removed " in text, n.name
    assert "service etcd (stopped, disabled)" in text and "/var/lib/etcd" in text and "interface weave" in text
    units = " ".join(paths.unit_name(u) for c in components.ALL for u in c.units)
    for n in lab.cluster.nodes:
        left = lab.script(n.name, f"""
            for u in {units} haproxy.service; do
                [ "$(systemctl is-enabled "$u" 2>/dev/null)" = enabled ] && echo "$u enabled"
            done
            ls -d /etc/etcd /var/lib/etcd /var/lib/kubelet /var/lib/kubernetes /var/lib/containerd /opt/cni \\
                  /var/lib/weave /var/lib/kthw /usr/local/bin/kubelet /usr/local/bin/etcd \\
                  /var/lib/etcd-snapshots /usr/local/sbin/kthw-etcd-snapshot 2>/dev/null || true
            iptables-save 2>/dev/null | grep -E 'KUBE-|WEAVE|CNI-' | head -3 || true
            ip -o link show weave 2>/dev/null || true
            findmnt -rn -o TARGET | grep -E '^(/var/lib/kubelet|/run/containerd)' || true""")
        assert left.strip() == "", (n.name, left)
    assert {p.name: p.read_bytes() for p in lab.cluster.pki_dir.glob("*") if p.is_file()} == pki  # local PKI kept
    again = lab.timed("reset again", [sys.executable, "-m", "pyinfra", "-y", "inventory.py", "reset.py"])
    assert "nothing (already reset)" in again.stdout + again.stderr

    lab.deploy(label="deploy after reset")
    lab.wait("every node Ready", lambda: set(lab.kubectl(
        "get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}").split()) == {"True"},
        timeout=180)
    lab.kubectl("run", "kthw-after-reset", f"--image={smoke_image(lab)}", "--restart=Never", "--", "true")
    lab.wait("a pod runs to completion", lambda: lab.kubectl(
        "get", "pod", "kthw-after-reset", "-o", "jsonpath={.status.phase}") == "Succeeded", timeout=120)
    lab.kubectl("delete", "pod", "kthw-after-reset")
    assert not [name for name, p in lab.plan().items() if p["hosts_with_change"]]
