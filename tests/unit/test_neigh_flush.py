"""kthw-neigh-flush, the CNI plugin last in Weave Net's chain (files/opt/cni/bin/kthw-neigh-flush.j2
says why), the Weave init container that puts it there and the weave container's start (its
peers asked for until the API answers): the rendered files, the scripts run against stand-ins,
and the plugin run for real in a throwaway network namespace holding a stale neighbour entry,
as a node holds one for a reused pod address."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid

import pytest
import yaml

from kthw.model import REPO_ROOT
from kthw.paths import CNI_NEIGH_FLUSH
from tests.conftest import cluster_file
from tests.unit.test_rendered import rendered

PLUGIN = REPO_ROOT / "files/opt/cni/bin/kthw-neigh-flush.j2"
WEAVE = "/etc/kubernetes/addons/10-weave.yaml"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return rendered(cluster_file(tmp_path_factory.mktemp("neigh")), "worker-1")


def weave_init(master_files) -> dict:
    ds = next(d for d in yaml.safe_load_all(master_files[WEAVE]) if d["kind"] == "DaemonSet")
    return ds["spec"]["template"]["spec"]["initContainers"][0]


def test_every_node_gets_the_plugin_and_weave_the_chain(files, tmp_path):
    assert files[CNI_NEIGH_FLUSH] == PLUGIN.read_bytes()
    init = weave_init(rendered(cluster_file(tmp_path), "master-1"))
    chain = json.loads(next(e["value"] for e in init["env"] if e["name"] == "CNI_CONFLIST"))
    assert [p["type"] for p in chain["plugins"]] == ["weave-net", "portmap", "kthw-neigh-flush"]
    # Weave's own settings kept as its setup-cni writes them.
    assert chain["plugins"][0]["hairpinMode"] is True and chain["plugins"][1]["snat"] is True


def test_the_bridge_cni_has_no_use_for_it(tmp_path):
    raw = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())
    raw["cni"] = "bridge"
    assert CNI_NEIGH_FLUSH not in rendered(cluster_file(tmp_path, raw), "worker-1")


UPSTREAM = '{"name": "weave", "plugins": [{"type": "weave-net"}, {"type": "portmap"}]}'


def weave_containers(master_files) -> dict:
    ds = next(d for d in yaml.safe_load_all(master_files[WEAVE]) if d["kind"] == "DaemonSet")
    return {c["name"]: c for c in ds["spec"]["template"]["spec"]["containers"]}


def stand_in(path, text: str):
    path.write_text(f"#!/bin/sh\n{text}\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("plugin_there", [True, False])
@pytest.mark.parametrize("new_node", [True, False])
def test_weave_init_writes_our_chain_only_where_the_plugin_is(tmp_path, plugin_there, new_node):
    init = weave_init(rendered(cluster_file(tmp_path), "master-1"))
    host = tmp_path / "host"
    (host / "etc/cni/net.d").mkdir(parents=True)
    (host / "opt/cni/bin").mkdir(parents=True)
    before = '{"name": "weave", "plugins": [{"type": "weave-net"}]}'  # what the node has had
    if not new_node:
        (host / "etc/cni/net.d/10-weave.conflist").write_text(before)
        (host / "etc/cni/net.d/.10-weave.conflist.staged").write_text("an earlier pod's, never moved")
    if plugin_there:
        stand_in(host / "opt/cni/bin/kthw-neigh-flush", "")
    # Weave's init.sh stood in for by what its setup-cni does with HOST_ROOT and the plugin dir
    init_sh = stand_in(tmp_path / "init.sh", f'touch "$WEAVE_CNI_PLUGIN_DIR/weave-net"\n'
                       f"echo '{UPSTREAM}' >\"$HOST_ROOT/etc/cni/net.d/10-weave.conflist\"")
    script = init["command"][2].replace("/host/", f"{host}/").replace("/home/weave/init.sh", str(init_sh))
    env = {"PATH": os.environ["PATH"], **{e["name"]: e["value"] for e in init["env"]}}
    subprocess.run(["sh", "-c", script], env=env, check=True)
    net_d = host / "etc/cni/net.d"
    assert (host / "opt/cni/bin/weave-net").exists()  # the plugin on the node
    if new_node:  # nothing live until the router answers: staged for the weave container
        assert sorted(p.name for p in net_d.iterdir()) == [".10-weave.conflist.staged"]
        written = (net_d / ".10-weave.conflist.staged").read_text()
    else:
        assert sorted(p.name for p in net_d.iterdir()) == ["10-weave.conflist"]
        written = (net_d / "10-weave.conflist").read_text()
    if plugin_there:
        assert json.loads(written)["plugins"][-1] == {"type": "kthw-neigh-flush"}
    else:
        assert written.strip() == (UPSTREAM if new_node else before)


@pytest.mark.parametrize("staged", [True, False])
def test_a_new_nodes_config_goes_live_once_the_router_answers(tmp_path, staged):
    weave = weave_containers(rendered(cluster_file(tmp_path), "master-1"))["weave"]
    host, bin_dir = tmp_path / "host", tmp_path / "bin"
    net_d = host / "etc/cni/net.d"
    net_d.mkdir(parents=True)
    bin_dir.mkdir()
    if staged:
        (net_d / ".10-weave.conflist.staged").write_text(UPSTREAM)
    # curl: the router answers from its third try on; launch.sh: records whether the config
    # was live when it started, then runs while one is staged (10 s at most)
    stand_in(bin_dir / "curl", f'echo x >>{tmp_path}/tries\n[ "$(wc -l <{tmp_path}/tries)" -ge 3 ]')
    launch = stand_in(tmp_path / "launch.sh",
                      f"[ -e {net_d}/10-weave.conflist ] && echo live >{tmp_path}/at-start\n"
                      f"for i in $(seq 100); do [ -e {net_d}/.10-weave.conflist.staged ] || exit 0; sleep 0.1; done")
    peers = stand_in(tmp_path / "kube-utils", "echo 192.168.56.11")
    script = (weave["command"][2].replace("/host/", f"{host}/").replace("/home/weave/launch.sh", str(launch))
              .replace("/home/weave/kube-utils", str(peers)))
    subprocess.run(["sh", "-c", script], env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, check=True, timeout=30)
    if staged:
        assert not (tmp_path / "at-start").exists()
        assert (tmp_path / "tries").read_text().count("x") >= 3
        for _ in range(50):  # the mover may still be finishing
            if (net_d / "10-weave.conflist").exists():
                break
            time.sleep(0.1)
        assert sorted(p.name for p in net_d.iterdir()) == ["10-weave.conflist"]
        assert (net_d / "10-weave.conflist").read_text() == UPSTREAM
    else:
        assert list(net_d.iterdir()) == [] and not (tmp_path / "tries").exists()


@pytest.mark.parametrize("failures, peers", [(2, "192.168.56.11 192.168.56.21"), (40, "")])
def test_the_weave_container_asks_for_its_peers_until_the_api_answers(tmp_path, failures, peers):
    """Upstream's launch.sh asks once and exits on a failure; the container's command asks for
    up to 30 s and hands the answer over in KUBE_PEERS (none: launch.sh asks, and fails, itself)."""
    weave = weave_containers(rendered(cluster_file(tmp_path), "master-1"))["weave"]
    kube_utils = stand_in(tmp_path / "kube-utils",
                          f'echo x >>{tmp_path}/asked\n[ "$(wc -l <{tmp_path}/asked)" -gt {failures} ] || exit 1\n'
                          'echo 192.168.56.11 192.168.56.21')
    launch = stand_in(tmp_path / "launch.sh", f'echo "$KUBE_PEERS" >{tmp_path}/peers')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in(bin_dir / "sleep", "")  # the 1 s waits between tries, skipped here
    script = (weave["command"][2].replace("/host/", f"{tmp_path}/host/").replace("/home/weave/launch.sh", str(launch))
              .replace("/home/weave/kube-utils", str(kube_utils)))
    subprocess.run(["sh", "-c", script], env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, check=True, timeout=30)
    assert (tmp_path / "peers").read_text().strip() == peers
    assert (tmp_path / "asked").read_text().count("x") == (failures + 1 if peers else 30)


needs_netns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                 reason="needs root and iproute2 for a network namespace")


@pytest.fixture
def netns():
    """A namespace with a bridge (fixed MAC, a port so it keeps its carrier, like weave's) and
    a stale entry for 10.99.0.2 with a MAC no pod has any more."""
    name = f"kthw-test-{uuid.uuid4().hex[:8]}"

    def ip(*args: str) -> str:
        return subprocess.run(["ip", "-n", name, *args], check=True, capture_output=True, text=True).stdout

    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "add", f"{name}-pod"], check=True)
    try:
        ip("link", "add", "br0", "address", "02:00:00:00:00:01", "type", "bridge")
        ip("link", "add", "port", "type", "veth", "peer", "name", "port-peer")
        ip("link", "set", "port", "master", "br0", "up")
        ip("link", "set", "port-peer", "up")
        ip("addr", "add", "10.99.0.1/24", "dev", "br0")
        ip("link", "set", "br0", "up")
        # the new pod: eth0 in its own namespace, the other end on the bridge
        ip("link", "add", "veth-pod", "type", "veth", "peer", "name", "eth0", "netns", f"{name}-pod")
        ip("link", "set", "veth-pod", "master", "br0", "up")
        subprocess.run(["ip", "-n", f"{name}-pod", "link", "set", "eth0", "address", "0a:00:00:00:00:22"],
                       check=True)
        ip("neigh", "add", "10.99.0.2", "lladdr", "0a:00:00:00:00:02", "nud", "stale", "dev", "br0")
        ip("neigh", "add", "10.99.0.3", "lladdr", "0a:00:00:00:00:03", "nud", "stale", "dev", "br0")
        yield name, ip
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        subprocess.run(["ip", "netns", "del", f"{name}-pod"], check=False)


def plugin(ns: str, command: str, conf: dict | None, path: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": path or os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": "c1",
           "CNI_NETNS": f"/var/run/netns/{ns}-pod", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    return subprocess.run(["ip", "netns", "exec", ns, "python3", str(PLUGIN)], env=env, check=True,
                          input=json.dumps(conf) if conf is not None else "", capture_output=True, text=True)


PREV = {"cniVersion": "0.3.0", "interfaces": [{"name": "eth0", "mac": "0a:00:00:00:00:22"}],
        "ips": [{"version": "4", "address": "10.99.0.2/24", "gateway": "10.99.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
CONF = {"cniVersion": "0.3.0", "name": "weave", "type": "kthw-neigh-flush", "prevResult": PREV}


@needs_netns
def test_add_clears_the_stale_entry_of_the_new_pods_address_and_passes_the_result_on(netns, tmp_path):
    ns, ip = netns
    # logger stood in for by a script that keeps its arguments (the journal is the node's)
    (tmp_path / "logger").write_text(f'#!/bin/sh\necho "$@" >>{tmp_path}/logged\n')
    (tmp_path / "logger").chmod(0o755)
    out = plugin(ns, "ADD", CONF, path=f"{tmp_path}:{os.environ['PATH']}")
    logged = (tmp_path / "logged").read_text()
    assert "10.99.0.2: the node still had another MAC" in logged and "0a:00:00:00:00:02" in logged
    assert "not the new pod's 0a:00:00:00:00:22" in logged
    assert json.loads(out.stdout) == PREV
    left = ip("neigh", "show", "dev", "br0")
    assert "10.99.0.2" not in left
    assert "10.99.0.3 lladdr 0a:00:00:00:00:03" in left  # another pod's entry is left alone


@needs_netns
def test_an_entry_that_already_names_the_new_pod_is_cleared_without_a_word(netns, tmp_path):
    ns, ip = netns
    ip("neigh", "replace", "10.99.0.2", "lladdr", "0a:00:00:00:00:22", "nud", "stale", "dev", "br0")
    (tmp_path / "logger").write_text(f'#!/bin/sh\necho "$@" >>{tmp_path}/logged\n')
    (tmp_path / "logger").chmod(0o755)
    plugin(ns, "ADD", CONF, path=f"{tmp_path}:{os.environ['PATH']}")
    assert not (tmp_path / "logged").exists()
    assert "10.99.0.2" not in ip("neigh", "show", "dev", "br0")


@needs_netns
def test_add_for_an_address_the_node_never_talked_to_changes_nothing(netns):
    ns, ip = netns
    conf = {**CONF, "prevResult": {**PREV, "ips": [{"version": "4", "address": "10.99.0.9/24"}]}}
    before = ip("neigh", "show", "dev", "br0")
    assert json.loads(plugin(ns, "ADD", conf).stdout)["ips"][0]["address"] == "10.99.0.9/24"
    assert ip("neigh", "show", "dev", "br0") == before


@needs_netns
@pytest.mark.parametrize("command", ["DEL", "CHECK"])
def test_other_commands_do_nothing(netns, command):
    ns, ip = netns
    before = ip("neigh", "show", "dev", "br0")
    assert plugin(ns, command, CONF).stdout == ""
    assert ip("neigh", "show", "dev", "br0") == before


def test_version():
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "VERSION"}
    out = subprocess.run(["python3", str(PLUGIN)], env=env, check=True, capture_output=True, text=True, input="")
    assert "0.3.0" in json.loads(out.stdout)["supportedVersions"]
