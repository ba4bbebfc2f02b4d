"""The inventory from recorded `vagrant ssh-config` output, its cache, and the static variant.

No Vagrant and no provider runs here: Vagrant is a fake that counts its calls, Vagrant's record
(.vagrant/machines/...) is laid out in a temporary directory, and the provider probe is a
function the tests drive (a restart is a new run identity, a halt is NotRunning)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections import namedtuple
from pathlib import Path

import pytest

from kthw.inventory import (
    CACHE_ENV,
    DEBUG_ENV,
    PROBES,
    VAGRANT_ENV,
    InventoryError,
    NotRunning,
    cache_file,
    default_dotfile_dir,
    default_vagrantfile,
    groups,
    last_source,
    libvirt_identity,
    limit_patterns,
    lxc_identity,
    needed_by,
    parse_proc_stat_start_time,
    parse_ssh_config,
    static_connections,
    vagrant_connections,
    virtualbox_identity,
)
from kthw.model import DEFAULT_CLUSTER_FILE, REPO_ROOT, load_cluster, parse_cluster

Status = namedtuple("Status", "name state provider")

# Recorded from `vagrant ssh-config master-1` (lxc provider).
SSH_CONFIG = """Host master-1
  HostName 10.0.3.17
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/root/.vagrant.d/insecure_private_key"
  IdentitiesOnly yes
  LogLevel FATAL
"""

# Recorded provider probe outputs.
LXC_INFO_RUNNING = "State:          RUNNING\nPID:            41873\n"
LXC_INFO_STOPPED = "State:          STOPPED\n"
# /proc/<pid>/stat with a command name holding a space and parentheses; start time 8812345.
PROC_STAT = ("41873 (init (lxc) x) S 41860 41873 41873 0 -1 4194560 5120 98311 12 480 31 44 "
             "170 95 20 0 1 0 8812345 171372544 2866 18446744073709551615 1 1 0 0 0 0 671173123 "
             "4096 1260 0 0 0 17 3 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
VBOX_INFO_RUNNING = """name="kubernetes-the-hard-way-master-1"
groups="/"
ostype="Ubuntu (64-bit)"
UUID="2f7a3b1c-4d5e-4f60-8a9b-0c1d2e3f4a5b"
CfgFile="/home/u/VirtualBox VMs/kubernetes-the-hard-way-master-1/kubernetes-the-hard-way-master-1.vbox"
memory=2048
cpus=2
"SATA Controller-0-0"="/home/u/VirtualBox VMs/kubernetes-the-hard-way-master-1/ubuntu-jammy-22.04-cloudimg.vmdk"
nic1="nat"
Forwarding(0)="ssh,tcp,127.0.0.1,2222,,22"
nic2="hostonly"
VMState="running"
VMStateChangeTime="2024-05-02T09:14:07.123000000"
"""
VBOX_INFO_POWEROFF = VBOX_INFO_RUNNING.replace('VMState="running"', 'VMState="poweroff"')
VIRSH_DOMINFO_RUNNING = """Id:             7
Name:           main_master-1
UUID:           6a1e0b4e-2f9c-4a36-9d1e-6f7f3c2b8a10
OS Type:        hvm
State:          running
CPU(s):         2
CPU time:       41.3s
Max memory:     2097152 KiB
Used memory:    2097152 KiB
Persistent:     yes
Autostart:      disable
Managed save:   no
Security model: apparmor
Security DOI:   0
Security label: libvirt-6a1e0b4e-2f9c-4a36-9d1e-6f7f3c2b8a10 (enforcing)

"""
VIRSH_DOMINFO_SHUT_OFF = VIRSH_DOMINFO_RUNNING.replace("Id:             7", "Id:             -").replace(
    "State:          running", "State:          shut off")


class FakeVagrant:
    """python-vagrant as the inventory uses it; `calls` lists every Vagrant command run."""

    def __init__(self, states: dict[str, str], addresses: dict[str, str]):
        self.states = states
        self.addresses = addresses
        self.calls: list[list[str]] = []

    def status(self):
        self.calls.append(["status"])
        return [Status(n, s, "lxc") for n, s in self.states.items()]

    def _run_vagrant_command(self, args):
        self.calls.append(list(args))
        assert args[0] == "ssh-config"
        names = args[1:]
        if any(self.states.get(n) != "running" for n in names):
            raise subprocess.CalledProcessError(1, ["vagrant", *args])  # what Vagrant does then
        return "\n".join(SSH_CONFIG.replace("master-1", n).replace("10.0.3.17", self.addresses[n])
                         for n in names)


class World:
    """A cluster file, a Vagrantfile, Vagrant's record of the running machines and a probe."""

    def __init__(self, root: Path):
        self.cluster_file = root / "cluster.yaml"
        shutil.copy(DEFAULT_CLUSTER_FILE, self.cluster_file)
        self.vagrantfile = root / "Vagrantfile"
        shutil.copy(REPO_ROOT / "Vagrantfile", self.vagrantfile)
        self.dotfile = root / ".vagrant"
        self.names = [n.name for n in self.cluster().nodes]
        self.states = {n: "running" for n in self.names}
        self.addresses = {n: f"10.0.3.{20 + i}" for i, n in enumerate(self.names)}
        self.runs: dict[str, object] = {}  # machine id -> run identity, or what the probe raises
        self.probe_calls: list[str] = []
        for i, n in enumerate(self.names):
            record = self.record(n)
            record.mkdir(parents=True)
            for name, text in [("id", f"kthw-{n}"), ("index_uuid", f"{i:032x}"), ("creator_uid", "0"),
                               ("action_provision", "1.5:uuid"), ("synced_folders", "{}"),
                               ("box_meta", '{"name": "kthw/debian-bookworm-lxc"}'), ("private_key", "KEY")]:
                (record / name).write_text(text)
            self.runs[f"kthw-{n}"] = f"pid {100 + i} started {5000 + i}"

    def record(self, name: str) -> Path:
        return self.dotfile / "machines" / name / "lxc"

    def cluster(self):
        return load_cluster(self.cluster_file)

    def probe(self, machine_id: str) -> str:
        self.probe_calls.append(machine_id)
        run = self.runs[machine_id]
        if isinstance(run, Exception):
            raise run
        return run

    def connections(self, probes=None) -> tuple[dict, FakeVagrant]:
        fake = FakeVagrant(self.states, self.addresses)
        probes = {"lxc": self.probe} if probes is None else probes
        conns = vagrant_connections(self.cluster(), lambda: fake, probes=probes, dotfile_dir=self.dotfile,
                                    vagrantfile=self.vagrantfile)
        return conns, fake

    def cache(self) -> Path:
        return cache_file(self.cluster())

    def ssh_config_call(self) -> list[list[str]]:
        return [["ssh-config", *self.names]]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No cache in the repository, and none of the caller's Vagrant settings."""
    monkeypatch.setenv("KTHW_STATE_DIR", str(tmp_path / "state"))
    for name in (*VAGRANT_ENV, CACHE_ENV, DEBUG_ENV, "KTHW_INVENTORY", "LIBVIRT_DEFAULT_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


# --------------------------------------------------------------------------- ssh-config and groups


def test_parse_ssh_config_strips_quotes_and_casts_the_port():
    assert parse_ssh_config(SSH_CONFIG) == {"master-1": {
        "ssh_hostname": "10.0.3.17", "ssh_port": 22, "ssh_user": "vagrant",
        "ssh_key": "/root/.vagrant.d/insecure_private_key"}}


def test_parse_ssh_config_reads_every_host_block():
    text = SSH_CONFIG + "\n" + SSH_CONFIG.replace("master-1", "worker-1").replace("10.0.3.17", "10.0.3.99")
    found = parse_ssh_config(text)
    assert set(found) == {"master-1", "worker-1"} and found["worker-1"]["ssh_hostname"] == "10.0.3.99"


def test_one_vagrant_call_for_every_machine(world):
    conns, fake = world.connections()
    assert fake.calls == world.ssh_config_call()  # no `vagrant status`: one Ruby start in all
    g = groups(world.cluster(), conns)
    assert [h for h, _ in g["masters"]] == ["master-1", "master-2"]
    assert [h for h, _ in g["workers"]] == ["worker-1", "worker-2"]
    assert [h for h, _ in g["loadbalancer"]] == ["loadbalancer"]
    data = dict(g["masters"])["master-2"]
    assert data["ssh_known_hosts_file"] == "/dev/null"  # throwaway host keys never reach known_hosts
    assert data["ssh_port"] == 22 and data["_sudo"] is True
    assert data["ssh_hostname"] == world.addresses["master-2"]
    assert data["private_ip"] == "192.168.56.12" and data["kthw_node"] == "master-2"
    assert last_source()[0] == "vagrant"


def failing_run(world: World) -> tuple[str, list[list[str]]]:
    """The error and the Vagrant calls of an inventory run that is expected to fail."""
    fake = FakeVagrant(world.states, world.addresses)
    with pytest.raises(InventoryError) as info:
        vagrant_connections(world.cluster(), lambda: fake, probes={"lxc": world.probe},
                            dotfile_dir=world.dotfile, vagrantfile=world.vagrantfile)
    return str(info.value), fake.calls


def test_a_machine_that_is_not_running_fails_fast_and_names_it(world):
    world.states["worker-2"] = "not_created"
    shutil.rmtree(world.record("worker-2"))
    world.states["master-2"] = "stopped"
    world.runs["kthw-master-2"] = NotRunning("lxc state STOPPED")
    msg, calls = failing_run(world)
    assert "worker-2 (not_created)" in msg and "master-2 (stopped)" in msg and "vagrant up" in msg
    assert calls == [*world.ssh_config_call(), ["status"]]  # status only to name what is down
    assert not world.cache().exists()


def test_ssh_config_failing_with_every_machine_running_says_so(world):
    class Broken(FakeVagrant):
        def _run_vagrant_command(self, args):
            self.calls.append(list(args))
            raise subprocess.CalledProcessError(1, ["vagrant", *args])

    with pytest.raises(InventoryError, match="although every machine is running.*vagrant reload"):
        vagrant_connections(world.cluster(), lambda: Broken(world.states, world.addresses),
                            probes={"lxc": world.probe}, dotfile_dir=world.dotfile, vagrantfile=world.vagrantfile)


# --------------------------------------------------------------------------- the cache


def test_a_cache_hit_asks_vagrant_nothing(world):
    first, _ = world.connections()
    second, fake = world.connections()
    assert fake.calls == [] and second == first
    assert last_source() == ("cache", "")
    assert sorted(world.probe_calls) == sorted(2 * list(world.runs))  # one probe per machine and run


def test_the_cache_file_is_private_and_written_whole(world):
    world.connections()
    path = world.cache()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    stored = json.loads(path.read_text())
    assert set(stored["machines"]) == set(world.names)
    assert stored["connections"]["master-1"]["ssh_hostname"] == world.addresses["master-1"]


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _restart_outside_vagrant(world: World) -> None:
    # lxc-stop + lxc-start by hand: new init PID, and (this lab) a new DHCP address on eth0.
    world.runs["kthw-master-1"] = "pid 999 started 77777"
    world.addresses["master-1"] = "10.0.3.200"


def _destroy_and_up(world: World) -> None:
    (world.record("worker-1") / "id").write_text("kthw-worker-1-new")
    world.runs["kthw-worker-1-new"] = "pid 4242 started 1"


CHANGES = {
    "cluster file": lambda w, mp: w.cluster_file.write_text(w.cluster_file.read_text() + "# edited\n"),
    "Vagrantfile": lambda w, mp: w.vagrantfile.write_text(w.vagrantfile.read_text() + "# edited\n"),
    "id file (destroy, up)": lambda w, mp: _destroy_and_up(w),
    "action file touched": lambda w, mp: _touch(w.record("master-2") / "action_provision"),
    "restart outside Vagrant": lambda w, mp: _restart_outside_vagrant(w),
    "VAGRANT_DEFAULT_PROVIDER": lambda w, mp: mp.setenv("VAGRANT_DEFAULT_PROVIDER", "lxc"),
    "KTHW_LAB_BRIDGE": lambda w, mp: mp.setenv("KTHW_LAB_BRIDGE", "kthw9"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_asks_vagrant_again_once(world, monkeypatch, change):
    world.connections()
    CHANGES[change](world, monkeypatch)
    conns, fake = world.connections()
    assert fake.calls == world.ssh_config_call() and last_source()[0] == "vagrant"
    assert all(c["ssh_hostname"] == world.addresses[n] for n, c in conns.items())  # never a stale address
    again, fake = world.connections()
    assert fake.calls == [] and again == conns  # the cache was rewritten


def test_a_halted_machine_gives_the_same_error_as_without_a_cache(world):
    world.connections()
    world.states["worker-1"] = "stopped"  # vagrant halt worker-1
    world.runs["kthw-worker-1"] = NotRunning("lxc state STOPPED")
    msg, calls = failing_run(world)
    assert calls == [*world.ssh_config_call(), ["status"]]
    assert msg.startswith("machines not running: worker-1 (stopped). Fix: `vagrant up`")


@pytest.mark.parametrize("failure", [
    subprocess.TimeoutExpired(["lxc-info"], 5),
    subprocess.CalledProcessError(1, ["lxc-info"]),
    FileNotFoundError(2, "No such file or directory: 'lxc-info'"),
    ValueError("odd output"),
])
def test_a_probe_failure_asks_vagrant_and_never_raises(world, failure):
    world.connections()
    world.runs["kthw-master-2"] = failure
    conns, fake = world.connections()
    assert fake.calls == world.ssh_config_call() and set(conns) == set(world.names)
    assert "master-2" in last_source()[1]


def test_a_machine_vagrant_did_not_create_means_no_cache(world):
    shutil.rmtree(world.record("loadbalancer"))
    world.connections()
    assert not world.cache().exists() and "loadbalancer: not created" in last_source()[1]


def test_a_provider_without_probe_means_no_cache(world):
    world.record("master-1").rename(world.record("master-1").with_name("docker"))
    world.connections()
    assert not world.cache().exists() and "no probe for provider docker" in last_source()[1]


def test_real_probes_without_their_tools_mean_no_cache(world, monkeypatch, tmp_path):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no lxc-info
    _, fake = world.connections(probes=PROBES)
    assert fake.calls == world.ssh_config_call() and not world.cache().exists()


def test_machines_are_probed_concurrently(world):
    barrier = threading.Barrier(len(world.names), timeout=5)  # breaks unless every probe runs at once

    def probe(machine_id):
        barrier.wait()
        return world.probe(machine_id)

    world.connections(probes={"lxc": probe})
    assert world.cache().exists()


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 1}', ""])
def test_a_corrupt_cache_is_ignored_and_rewritten(world, content):
    world.connections()
    world.cache().write_text(content)
    _, fake = world.connections()
    assert fake.calls == world.ssh_config_call()
    _, fake = world.connections()
    assert fake.calls == []


def test_the_cache_can_be_turned_off(world, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    for _ in range(2):
        _, fake = world.connections()
        assert fake.calls == world.ssh_config_call()
    assert not world.cache().exists() and world.probe_calls == []
    assert last_source() == ("vagrant", "KTHW_INVENTORY_CACHE=off")


def test_stdout_stays_clean_and_debug_says_where_from(world, monkeypatch, capsys):
    world.connections()
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv(DEBUG_ENV, "1")
    world.connections()
    world.cluster_file.write_text(world.cluster_file.read_text() + "# edited\n")
    world.connections()
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["inventory: from cache", "inventory: vagrant ssh-config "
                                "(cluster file, Vagrantfile or environment changed)"]


def test_vagrant_locations_follow_its_environment(monkeypatch, tmp_path):
    assert default_dotfile_dir() == REPO_ROOT / ".vagrant" and default_vagrantfile() == REPO_ROOT / "Vagrantfile"
    monkeypatch.setenv("VAGRANT_CWD", str(tmp_path))
    monkeypatch.setenv("VAGRANT_DOTFILE_PATH", "state/vagrant")
    assert default_dotfile_dir() == tmp_path / "state" / "vagrant"
    assert default_vagrantfile() == tmp_path / "Vagrantfile"


# --------------------------------------------------------------------------- provider probes


def test_lxc_identity_is_pid_and_start_time():
    assert parse_proc_stat_start_time(PROC_STAT) == "8812345"
    assert lxc_identity(LXC_INFO_RUNNING, start_time=lambda pid: {41873: "8812345"}[pid]) == \
        "pid 41873 started 8812345"
    # The same PID reused by a restarted container: another start time, another identity.
    assert lxc_identity(LXC_INFO_RUNNING, start_time=lambda pid: "9000000") != "pid 41873 started 8812345"
    with pytest.raises(NotRunning, match="STOPPED"):
        lxc_identity(LXC_INFO_STOPPED)


def test_proc_start_time_reads_this_process():
    from kthw.inventory import proc_start_time

    assert proc_start_time(os.getpid()).isdigit()


def test_virtualbox_identity_is_state_change_time_and_ports():
    ident = virtualbox_identity(VBOX_INFO_RUNNING)
    assert ident == "since 2024-05-02T09:14:07.123000000 ports ssh,tcp,127.0.0.1,2222,,22"
    restarted = VBOX_INFO_RUNNING.replace("09:14:07", "10:01:55")
    assert virtualbox_identity(restarted) != ident
    with pytest.raises(NotRunning, match="poweroff"):
        virtualbox_identity(VBOX_INFO_POWEROFF)


def test_libvirt_identity_is_the_domain_id():
    assert libvirt_identity(VIRSH_DOMINFO_RUNNING) == "domain id 7"
    with pytest.raises(NotRunning, match="shut off"):
        libvirt_identity(VIRSH_DOMINFO_SHUT_OFF)


# --------------------------------------------------------------------------- static


def test_static_inventory(raw_cluster):
    for i, node in enumerate(raw_cluster["nodes"]):
        node["ssh"] = {"host": f"10.1.0.{i + 10}", "user": "root"}
    cluster = parse_cluster(raw_cluster)
    conns = static_connections(cluster)
    assert conns["worker-1"] == {"ssh_hostname": "10.1.0.13", "ssh_port": 22, "ssh_user": "root"}
    data = dict(groups(cluster, conns)["workers"])["worker-1"]
    assert data["_sudo"] is False
    assert "ssh_known_hosts_file" not in data  # real machines: host keys are checked


def test_static_inventory_names_nodes_without_ssh(raw_cluster):
    raw_cluster["nodes"][0]["ssh"] = {"host": "10.1.0.1"}
    with pytest.raises(InventoryError, match="master-1, master-2, worker-1, worker-2"):
        static_connections(parse_cluster(raw_cluster))


def test_bad_cluster_file_stops_before_any_host_is_touched(tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text((REPO_ROOT / "cluster.yaml").read_text().replace("cni: weave", "cni: flannel"))
    out = subprocess.run([sys.executable, "-m", "pyinfra", "inventory.py", "deploy.py", "--dry"],
                         cwd=REPO_ROOT, env={"KTHW_CLUSTER": str(bad), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "cni = 'flannel': is not one of the supported values. Fix: use one of 'weave' or 'bridge'" in out.stderr
    assert "Connecting to hosts" not in out.stdout



def test_limit_patterns_are_read_from_the_command_line():
    argv = ["pyinfra", "inventory.py", "deploy.py", "--limit", "masters", "--limit=worker-1,loadbalancer", "-y"]
    assert limit_patterns(argv) == ["masters", "worker-1", "loadbalancer"]
    assert limit_patterns(["pyinfra", "inventory.py", "deploy.py"]) == []


def test_a_stopped_machine_the_limit_does_not_need_is_left_out_with_a_warning(world, capsys):
    world.states["worker-2"] = "stopped"
    world.runs["kthw-worker-2"] = NotRunning("lxc state STOPPED")
    fake = FakeVagrant(world.states, world.addresses)
    conns = vagrant_connections(world.cluster(), lambda: fake, probes={"lxc": world.probe},
                                dotfile_dir=world.dotfile, vagrantfile=world.vagrantfile,
                                needed=needed_by(["masters"]))
    assert sorted(conns) == ["loadbalancer", "master-1", "master-2", "worker-1"]
    err = capsys.readouterr().err
    assert "left out of this run" in err and "worker-2 (stopped)" in err
    g = groups(world.cluster(), conns)
    assert [h for h, _ in g["workers"]] == ["worker-1"]
    assert fake.calls[-1] == ["ssh-config", "loadbalancer", "master-1", "master-2", "worker-1"]


def test_a_stopped_machine_the_limit_needs_still_stops_the_run(world):
    world.states["master-2"] = "stopped"
    world.runs["kthw-master-2"] = NotRunning("lxc state STOPPED")
    fake = FakeVagrant(world.states, world.addresses)
    with pytest.raises(InventoryError) as info:
        vagrant_connections(world.cluster(), lambda: fake, probes={"lxc": world.probe}, dotfile_dir=world.dotfile,
                            vagrantfile=world.vagrantfile, needed=needed_by(["master-*"]))
    assert "master-2 (stopped)" in str(info.value) and "--limit needs them" in str(info.value)


def test_without_a_limit_a_stopped_machine_stops_the_run_and_says_how_to_go_on(world):
    world.states["worker-2"] = "stopped"
    world.runs["kthw-worker-2"] = NotRunning("lxc state STOPPED")
    msg, _ = failing_run(world)
    assert "worker-2 (stopped)" in msg and "vagrant up" in msg and "--limit" in msg
