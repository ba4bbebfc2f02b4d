"""Shell commands of the addons, run for real against a stand-in kubectl that logs its calls."""

from __future__ import annotations

import subprocess

from operations.addons import label_control_plane


def fake_kubectl(tmp_path, get_fails_first: int = 0):
    log, count = tmp_path / "calls", tmp_path / "count"
    script = tmp_path / "kubectl"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
case "$1" in get) [ "$n" -ge {get_fails_first} ] ;; *) exit 0 ;; esac
""")
    script.chmod(0o755)
    return str(script), log


def test_labels_the_masters_once_their_nodes_exist(tmp_path):
    kubectl, log = fake_kubectl(tmp_path, get_fails_first=2)
    cmd = label_control_plane(["master-1", "master-2"], kubectl=kubectl, tries=5).replace("sleep 2", "sleep 0")
    subprocess.run(["sh", "-c", cmd], check=True)
    calls = log.read_text().splitlines()
    assert calls[:3] == ["get node master-1 master-2"] * 3  # waited while the nodes were missing
    assert calls[3:] == ["label node master-1 master-2 node-role.kubernetes.io/control-plane= --overwrite"]


def test_fails_without_labelling_when_the_nodes_never_appear(tmp_path):
    kubectl, log = fake_kubectl(tmp_path, get_fails_first=99)
    cmd = label_control_plane(["master-1"], kubectl=kubectl, tries=2).replace("sleep 2", "sleep 0")
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    assert out.returncode != 0 and "Node objects of master-1 not ready" in out.stderr
    assert not any(c.startswith("label") for c in log.read_text().splitlines())
