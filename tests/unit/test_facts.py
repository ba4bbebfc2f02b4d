"""Our facts: the host-side snapshot script run for real here, and the ad-hoc facts' parsers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from kthw.facts import (
    HASH_CACHE,
    RECORD_HASHES_SCRIPT,
    CertificateExpiry,
    EtcdHealth,
    EtcdSnapshots,
    HostState,
    KthwServices,
)


def run_host_state(spec: dict, tmp_path) -> dict:
    """Run the same command pyinfra would send, on this machine (cache kept in tmp_path)."""
    cmd = HostState().command(spec=spec)
    script = cmd.split(" ", 2)[2]  # python3 -c <script> <spec>
    out = subprocess.run(f"{sys.executable} -c {script}", shell=True, capture_output=True, text=True,
                         env={**os.environ, "PATH": os.environ["PATH"]}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return HostState().process(out.stdout.splitlines())


def tree(path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(path.rglob("*"))}


def test_host_state_reports_files_dirs_and_kernel(tmp_path):
    f = tmp_path / "managed.txt"
    f.write_bytes(b"hello\n")
    f.chmod(0o640)
    cache = tmp_path / "kthw" / "hash-cache.json"
    spec = {"files": [str(f), str(tmp_path / "absent")], "dirs": [str(tmp_path)],
            "sysctls": ["kernel.ostype"], "packages": [], "hash_cache": str(cache)}
    before = tree(tmp_path)
    state = run_host_state(spec, tmp_path)
    sha, mode, owner = state["files"][str(f)]
    assert sha == hashlib.sha256(b"hello\n").hexdigest() and mode == 0o640 and ":" in owner
    assert state["files"][str(tmp_path / "absent")] is None
    assert state["dirs"][str(tmp_path)][0] == tmp_path.stat().st_mode & 0o7777
    assert state["sysctls"]["kernel.ostype"] == "Linux"
    assert state["cgroup"] in ("v1", "v2")
    assert isinstance(state["swap"], list) and isinstance(state["overlay"], bool)
    assert tree(tmp_path) == before  # a fact writes nothing, not even its cache


def test_host_state_on_a_fresh_master_asks_nothing_of_a_missing_kubectl(tmp_path):
    kubectl = {"binary": str(tmp_path / "kubectl"), "kubeconfig": str(tmp_path / "admin.kubeconfig")}
    spec = {"manifests": ["/etc/kubernetes/addons/10-weave.yaml"], "questions": {"weave_range": kubectl},
            "kubectl": kubectl}
    state = run_host_state(spec, tmp_path)
    assert state["weave_range"] == "" and state["manifests"] == {"/etc/kubernetes/addons/10-weave.yaml": "missing"}


def record_hashes(files: dict, cache) -> subprocess.CompletedProcess:
    req = json.dumps({"cache": str(cache), "files": files})
    return subprocess.run([sys.executable, "-c", RECORD_HASHES_SCRIPT, req], capture_output=True, text=True)


def test_hash_cache_is_written_when_files_are_placed_and_only_read_by_the_snapshot(tmp_path):
    big = tmp_path / "kube-apiserver"
    big.write_bytes(b"binary" * 1000)
    sha = hashlib.sha256(big.read_bytes()).hexdigest()
    cache = tmp_path / "kthw" / "hash-cache.json"
    assert record_hashes({str(big): sha}, cache).returncode == 0
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    # The snapshot trusts the cache while size, mtime and inode match: prove it answers from it
    # by planting another digest for the same stat.
    entry = json.loads(cache.read_text())[str(big)]
    cache.write_text(json.dumps({str(big): entry[:3] + ["f" * 64]}))
    spec = {"files": [str(big)], "hash_cache": str(cache)}
    assert run_host_state(spec, tmp_path)["files"][str(big)][0] == "f" * 64
    # A file changed behind the cache's back (new mtime) is hashed again.
    big.write_bytes(b"other")
    assert run_host_state(spec, tmp_path)["files"][str(big)][0] == hashlib.sha256(b"other").hexdigest()


def test_placed_content_that_differs_from_what_was_sent_fails(tmp_path):
    f = tmp_path / "ca.crt"
    f.write_bytes(b"truncated")
    out = record_hashes({str(f): "0" * 64}, tmp_path / "cache.json")
    assert out.returncode != 0 and str(f) in out.stderr
    assert str(f) not in json.loads((tmp_path / "cache.json").read_text())


def test_host_state_command_is_one_shell_word_pair():
    cmd = HostState().command(spec={"files": ["/etc/it's"]})
    assert cmd.startswith("python3 -c '")
    assert json.dumps({"applied_dir": "/var/lib/kthw/applied", "files": ["/etc/it's"], "hash_cache": HASH_CACHE},
                      sort_keys=True).replace("'", "'\"'\"'") in cmd


def test_certificate_expiry_parses_openssl_lines():
    out = CertificateExpiry().process([
        "/var/lib/kubernetes/pki/ca.crt|CN=KUBERNETES-CA,O=kubernetes-the-hard-way|Nov 23 12:00:00 2036 GMT",
        "/etc/etcd/etcd-server.crt|CN=etcd-server|Nov 25 12:00:00 2027 GMT",
    ])
    assert out["/etc/etcd/etcd-server.crt"] == {"subject": "CN=etcd-server", "not_after": "Nov 25 12:00:00 2027 GMT"}


def test_etcd_health_parses_member_list_and_health():
    members = {"members": [{"name": "master-1", "peerURLs": ["https://192.168.56.11:2380"],
                            "clientURLs": ["https://192.168.56.11:2379"]}]}
    health = [{"endpoint": "https://192.168.56.11:2379", "health": True}]
    out = EtcdHealth().process([json.dumps(members), "---", json.dumps(health)])
    assert out["members"][0]["name"] == "master-1"
    assert out["health"] == {"https://192.168.56.11:2379": True}
    assert EtcdHealth().process(["garbage", "---"]) == {"members": [], "health": {}}


def test_kthw_services_lists_only_installed_units():
    lines = ["Id=etcd.service", "LoadState=loaded", "ActiveState=active", "UnitFileState=enabled",
             "ActiveEnterTimestamp=Wed 2026-11-25 12:00:00 UTC", "",
             "Id=kubelet.service", "LoadState=not-found", "ActiveState=inactive", "UnitFileState="]
    assert KthwServices().process(lines) == {
        "etcd": {"active": "active", "enabled": "enabled", "since": "Wed 2026-11-25 12:00:00 UTC"}}
    # a unit named with its type (a timer) is asked and reported by that name
    timer = ["Id=kthw-etcd-snapshot.timer", "LoadState=loaded", "ActiveState=active", "UnitFileState=enabled",
             "ActiveEnterTimestamp="]
    assert list(KthwServices().process(timer)) == ["kthw-etcd-snapshot.timer"]


def test_host_state_asks_systemd_for_a_timer_by_its_own_name(tmp_path):
    # a bare name is a service; "x.timer" must not become "x.timer.service"
    from kthw.facts import _HOST_STATE_SCRIPT

    assert 'return unit if "." in unit else unit + ".service"' in _HOST_STATE_SCRIPT
    assert _HOST_STATE_SCRIPT.count("unit_name(u) for u in") == 2  # the services section and units_left


def test_every_question_a_component_asks_is_one_the_host_script_answers(tmp_path):
    # questions are registered by name in the host script; each component declares its own
    import re

    from kthw.facts import _HOST_STATE_SCRIPT
    from kthw.model import load_cluster
    from tests.conftest import cluster_file, scaled
    from tests.plan.states import _wants

    known = set(re.findall(r"^@question\ndef (\w+)", _HOST_STATE_SCRIPT, re.M))
    asked = set()
    for raw_cni in ("weave", "bridge"):
        raw = scaled(2, 1)
        raw["cni"] = raw_cni
        cluster = load_cluster(cluster_file(tmp_path / raw_cni, raw))
        for node in cluster.nodes:
            for w in _wants(cluster, node).values():
                asked |= set(w.queries)
    assert asked and asked <= known, asked - known


def test_etcd_snapshots_lists_a_masters_scheduled_snapshots(tmp_path):
    folder = tmp_path / "etcd-snapshots"
    folder.mkdir()
    for name, size in (("etcd-20261207T060000Z.db", 3), ("etcd-20261207T000000Z.db", 5),
                       ("etcd-20261207T060000Z.json", 1), (".partial-20261207T120000Z", 0)):
        (folder / name).write_bytes(b"x" * size)
    cmd = EtcdSnapshots().command().replace("/var/lib/etcd-snapshots", str(folder))
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True)
    assert EtcdSnapshots().process(out.stdout.splitlines()) == [
        {"name": "etcd-20261207T000000Z.db", "bytes": 5}, {"name": "etcd-20261207T060000Z.db", "bytes": 3}]
    cmd = EtcdSnapshots().command().replace("/var/lib/etcd-snapshots", str(tmp_path / "none"))
    empty = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True)
    assert EtcdSnapshots().process(empty.stdout.splitlines()) == []
