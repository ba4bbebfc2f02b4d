"""Build pyinfra inventory groups from the cluster model and where the machines are.

- Vagrant (default): one ``vagrant ssh-config <every node>`` call (python-vagrant). Only when that
  fails does a ``vagrant status`` follow, to name each machine that is missing or stopped, with
  the command that fixes it.
- Static: machines not made by Vagrant; every node carries ``ssh: {host, port, user, key}``
  in the cluster file (KTHW_INVENTORY=static, or automatic when every node has one).

Each Vagrant call starts Ruby (1-4 s), so the parsed ``ssh-config`` is cached in
``<state_dir>/inventory/vagrant-ssh.json`` and reused only while nothing that changes a machine
has changed:

- the key: the cluster file's and the Vagrantfile's bytes, the environment that changes what
  Vagrant does (:data:`VAGRANT_ENV`), the host's boot id;
- each machine's fingerprint: Vagrant's record of it (the files in
  ``<dotfile dir>/machines/<name>/<provider>/``, content and mtime: ``vagrant up/halt/reload/
  destroy`` rewrite them) plus the provider's run identity, which changes on every start, also
  one made outside Vagrant (lxc: PID and process start time; virtualbox: VMStateChangeTime;
  libvirt: domain id). A machine that is not running, an unknown provider, a missing probe
  tool or a probe error means no cache: Vagrant is asked, and its errors are the same as
  without a cache.

KTHW_INVENTORY_CACHE=off turns the cache off. KTHW_INVENTORY_DEBUG=1 writes one line on stderr
saying where the inventory came from (stdout stays clean: pyinfra parses it); ``last_source()``
tells the same to code in this process.

Vagrant's throwaway machines get new host keys on every ``vagrant up``: theirs never go into the
user's known_hosts. Static machines are real ones: their host keys are checked as usual.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatch
from pathlib import Path

from kthw.model import REPO_ROOT, Cluster, Node

SSH_DEFAULTS = {"ssh_known_hosts_file": "/dev/null", "ssh_strict_host_key_checking": "no"}
GROUPS = {"loadbalancer": "loadbalancer", "master": "masters", "worker": "workers"}

CACHE_ENV = "KTHW_INVENTORY_CACHE"
DEBUG_ENV = "KTHW_INVENTORY_DEBUG"
CACHE_VERSION = 1
# Environment that changes which machines Vagrant makes, how, or where it keeps its record.
VAGRANT_ENV = ("VAGRANT_DEFAULT_PROVIDER", "VAGRANT_DOTFILE_PATH", "VAGRANT_CWD", "VAGRANT_VAGRANTFILE",
               "VAGRANT_HOME", "KTHW_CLUSTER", "KTHW_BOX", "KTHW_LAB_BRIDGE", "KTHW_LAB_MGMT_BRIDGE",
               "KTHW_LAB_DIR")
PROBE_TIMEOUT = 5.0

# A probe takes the provider's machine id (the `id` file) and returns the machine's run identity:
# a string that changes whenever the machine (re)starts. It raises when the machine is not running
# or when it cannot tell.
Probe = Callable[[str], str]

# How the last inventory was obtained ("cache", "vagrant" or "static") and why, for benchmarks.
LAST_SOURCE = ""
LAST_REASON = ""


class InventoryError(Exception):
    pass


class NotRunning(Exception):
    """A provider probe found the machine not running (or could not read its state)."""


def host_data(cluster: Cluster, node: Node, connection: dict) -> dict:
    data = dict(connection)
    data["kthw_node"] = node.name
    data["kthw_cluster"] = str(cluster.source)
    data["kthw_role"] = node.role
    data["private_ip"] = str(node.ip)
    data["_sudo"] = connection.get("ssh_user") != "root"
    return data


def groups(cluster: Cluster, connections: dict[str, dict], prefix: str = "") -> dict[str, list]:
    """{group: [(host name, data)]} in model order (nodes without connection data, left out by
    a --limit, are not in any group)."""
    out: dict[str, list] = {g: [] for g in GROUPS.values()}
    for node in cluster.nodes:
        if node.name not in connections:
            continue
        out[GROUPS[node.role]].append((prefix + node.name, host_data(cluster, node, connections[node.name])))
    return out


def static_connections(cluster: Cluster) -> dict[str, dict]:
    missing = [n.name for n in cluster.nodes if n.ssh is None]
    if missing:
        raise InventoryError(
            f"static inventory: nodes without `ssh` in {cluster.source}: {', '.join(missing)}. "
            "Fix: give each node `ssh: {host: ..., user: ...}`, or unset KTHW_INVENTORY to use Vagrant."
        )
    out = {}
    for n in cluster.nodes:
        c = {"ssh_hostname": n.ssh.host, "ssh_port": n.ssh.port, "ssh_user": n.ssh.user}
        if n.ssh.key:
            c["ssh_key"] = os.path.expanduser(n.ssh.key)
        out[n.name] = c
    return out


def parse_ssh_config(text: str) -> dict[str, dict]:
    """`vagrant ssh-config` output (one Host block per machine) -> {machine: pyinfra SSH data}."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        value = value.strip().strip('"')
        if key == "Host":
            current = blocks.setdefault(value, {})
        elif current is not None and key in ("HostName", "User", "Port", "IdentityFile"):
            current[key] = value
    out = {}
    for name, fields in blocks.items():
        try:
            out[name] = {"ssh_hostname": fields["HostName"], "ssh_port": int(fields["Port"]),
                         "ssh_user": fields["User"], "ssh_key": fields["IdentityFile"]}
        except (KeyError, ValueError) as exc:
            raise InventoryError(f"unexpected `vagrant ssh-config` output for {name} (missing {exc})") from None
    return out


# --------------------------------------------------------------------------- provider probes


def _fields(text: str, sep: str) -> dict[str, str]:
    """`key<sep>value` lines -> {key: value}, quotes and padding stripped."""
    out = {}
    for line in text.splitlines():
        key, found, value = line.partition(sep)
        if found:
            out[key.strip().strip('"')] = value.strip().strip('"')
    return out


def parse_proc_stat_start_time(stat: str) -> str:
    """Field 22 of /proc/<pid>/stat: the process start time (clock ticks after boot)."""
    # Field 2 (comm) may hold spaces and parentheses: count from the last ")", which ends it.
    return stat.rpartition(")")[2].split()[22 - 3]


def proc_start_time(pid: int) -> str:
    return parse_proc_stat_start_time(Path(f"/proc/{pid}/stat").read_text())


def lxc_identity(info: str, start_time: Callable[[int], str] = proc_start_time) -> str:
    """Run identity from `lxc-info -s -p`: the init PID and its start time (a restarted
    container gets a new PID, or the same PID with another start time)."""
    f = _fields(info, ":")
    if f.get("State") != "RUNNING":
        raise NotRunning(f"lxc state {f.get('State', 'unknown')}")
    pid = int(f["PID"])
    return f"pid {pid} started {start_time(pid)}"


def virtualbox_identity(info: str) -> str:
    """Run identity from `VBoxManage showvminfo --machinereadable`: the time of the last state
    change (moves on every start) and the forwarded ports (the SSH port is one)."""
    f = _fields(info, "=")
    if f.get("VMState") != "running":
        raise NotRunning(f"virtualbox state {f.get('VMState', 'unknown')}")
    ports = sorted(v for k, v in f.items() if k.startswith("Forwarding("))
    return f"since {f['VMStateChangeTime']} ports {' '.join(ports)}"


def libvirt_identity(info: str) -> str:
    """Run identity from `virsh dominfo`: the domain id, new on every start of the domain."""
    f = _fields(info, ":")
    if f.get("State") != "running":
        raise NotRunning(f"libvirt state {f.get('State', 'unknown')}")
    return f"domain id {int(f['Id'])}"


def _probe_output(cmd: list[str]) -> str:
    # LC_ALL=C: virsh translates its field names.
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=PROBE_TIMEOUT,
                          stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"}).stdout


def probe_lxc(machine_id: str) -> str:
    return lxc_identity(_probe_output(["lxc-info", "-n", machine_id, "-s", "-p"]))


def probe_virtualbox(machine_id: str) -> str:
    return virtualbox_identity(_probe_output(["VBoxManage", "showvminfo", machine_id, "--machinereadable"]))


def probe_libvirt(machine_id: str) -> str:
    uri = os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system"
    return libvirt_identity(_probe_output(["virsh", "-c", uri, "dominfo", machine_id]))


PROBES: dict[str, Probe] = {"lxc": probe_lxc, "virtualbox": probe_virtualbox, "libvirt": probe_libvirt}


# --------------------------------------------------------------------------- cache


def vagrant_root() -> Path:
    """Where Vagrant finds the Vagrantfile: $VAGRANT_CWD, else the repository (where we run it)."""
    return Path(os.environ.get("VAGRANT_CWD") or REPO_ROOT)


def default_vagrantfile() -> Path:
    return vagrant_root() / (os.environ.get("VAGRANT_VAGRANTFILE") or "Vagrantfile")


def default_dotfile_dir() -> Path:
    """Vagrant's record of its machines: $VAGRANT_DOTFILE_PATH (relative to the root), else .vagrant."""
    return vagrant_root() / os.path.expanduser(os.environ.get("VAGRANT_DOTFILE_PATH") or ".vagrant")


def cache_file(cluster: Cluster) -> Path:
    return cluster.state_dir / "inventory" / "vagrant-ssh.json"


def cache_key(cluster: Cluster, vagrantfile: Path, dotfile_dir: Path) -> str:
    """What every machine's fingerprint is only valid together with. Raises OSError when the
    cluster file or the Vagrantfile cannot be read."""
    try:
        # Process start times count from boot; a host reboot stops every machine anyway.
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    parts = {
        "cluster": hashlib.sha256(Path(cluster.source).read_bytes()).hexdigest(),
        "vagrantfile": hashlib.sha256(vagrantfile.read_bytes()).hexdigest(),
        "paths": [str(Path(cluster.source).resolve()), str(vagrantfile.resolve()), str(dotfile_dir.resolve())],
        "env": {name: os.environ.get(name) for name in VAGRANT_ENV},
        "boot": boot_id,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def machine_fingerprint(name: str, dotfile_dir: Path, probes: Mapping[str, Probe]) -> str:
    """Vagrant's record of one machine plus its provider's run identity. Raises (NotRunning,
    OSError, a probe's error) when there is none to trust."""
    created = sorted(p.parent for p in (dotfile_dir / "machines" / name).glob("*/id"))
    if len(created) != 1:
        raise NotRunning("not created" if not created else "created by several providers")
    record = created[0]
    provider = record.name
    if provider not in probes:
        raise NotRunning(f"no probe for provider {provider}")
    h = hashlib.sha256(provider.encode())
    # Every file Vagrant keeps for the machine (id, index_uuid, action_*, private_key, ...):
    # up, halt, reload and destroy write or remove some of them.
    for f in sorted(record.iterdir()):
        if f.is_file():
            h.update(f"{f.name} {f.stat().st_mtime_ns} {hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    machine_id = (record / "id").read_text().strip()
    if not machine_id:
        raise NotRunning("empty id file")
    h.update(probes[provider](machine_id).encode())
    return h.hexdigest()


def fingerprints(names: list[str], dotfile_dir: Path, probes: Mapping[str, Probe]) -> dict[str, str]:
    """Every machine's fingerprint, probed concurrently (one subprocess per machine). Raises
    NotRunning naming the first machine without one."""

    def one(name: str) -> str:
        try:
            return machine_fingerprint(name, dotfile_dir, probes)
        except Exception as exc:  # a missing tool, a timeout, odd output: all mean "ask Vagrant"
            raise NotRunning(f"{name}: {str(exc) or type(exc).__name__}") from None

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        futures = [pool.submit(one, n) for n in names]
    return {n: fut.result() for n, fut in zip(names, futures, strict=True)}


def _read_cache(path: Path) -> dict | None:
    """The stored cache, or None when absent, unreadable or not of this version."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(data, dict) and data.get("version") == CACHE_VERSION and isinstance(data.get("key"), str)
          and isinstance(data.get("machines"), dict) and isinstance(data.get("connections"), dict))
    return data if ok else None


def _write_cache(path: Path, data: dict) -> None:
    """Atomic (tmp + rename), dir 0700, file 0600. A failure only costs the next run a Vagrant call."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".vagrant-ssh.")  # created 0600
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass


def _note(source: str, reason: str = "") -> None:
    global LAST_SOURCE, LAST_REASON
    LAST_SOURCE, LAST_REASON = source, reason
    if os.environ.get(DEBUG_ENV):
        what = {"cache": "from cache", "vagrant": "vagrant ssh-config"}.get(source, source)
        print(f"inventory: {what}" + (f" ({reason})" if reason else ""), file=sys.stderr)


def last_source() -> tuple[str, str]:
    """How the last inventory in this process was obtained: ("cache" | "vagrant" | "static", reason)."""
    return LAST_SOURCE, LAST_REASON


# --------------------------------------------------------------------------- Vagrant


def limit_patterns(argv: list[str]) -> list[str]:
    """The ``--limit`` values of a pyinfra command line (each may be comma-separated)."""
    found = []
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--limit" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--limit=") else None)
        if value:
            found += [v for v in value.split(",") if v]
    return found


def needed_by(patterns: list[str]) -> Callable[[Node], bool] | None:
    """Which nodes a ``--limit`` selects, by host or group name (glob patterns, as pyinfra
    matches them); None without a limit (every node is needed)."""
    if not patterns:
        return None
    return lambda n: any(fnmatch(n.name, p) or fnmatch(GROUPS[n.role], p) for p in patterns)


def _ask_vagrant(cluster: Cluster, vagrant_factory: Callable,
                 needed: Callable[[Node], bool] | None = None) -> dict[str, dict]:
    """One `vagrant ssh-config <every node>`; when it fails, `vagrant status` says which machine is
    missing or stopped. A machine that is down but not ``needed`` (a --limit leaves it out) is
    left out with a warning; one that is needed stops the run before any host is touched."""
    names = [n.name for n in cluster.nodes]
    v = vagrant_factory()
    try:
        # python-vagrant's ssh_config() takes one name; the command takes them all.
        text = v._run_vagrant_command(["ssh-config", *names])
    except Exception as exc:  # CalledProcessError when a machine is not running; no vagrant at all
        return _machines_down(cluster, v, exc, needed)
    found = parse_ssh_config(text)
    missing = [n for n in names if n not in found]
    if missing:
        raise InventoryError(f"`vagrant ssh-config` did not list {', '.join(missing)}. Fix: `vagrant reload` them.")
    return {n: found[n] for n in names}


def _machines_down(cluster: Cluster, v, exc: Exception,
                   needed: Callable[[Node], bool] | None) -> dict[str, dict]:
    """After `vagrant ssh-config` failed with ``exc``: ask `vagrant status` which machines are down.
    When a --limit needs none of them, the running ones' connections (with a warning); else an
    error that names them (or says that every machine is running)."""
    names = [n.name for n in cluster.nodes]
    try:
        states = {s.name: s.state for s in v.status()}
    except Exception as status_exc:
        raise InventoryError(f"`vagrant status` failed ({status_exc}). Fix: install Vagrant and run "
                             "`vagrant up` (or `make up`) in the repository.") from None
    down = [n for n in names if states.get(n) != "running"]
    said = ", ".join(f"{n} ({states.get(n, 'not defined')})" for n in down)
    if down and needed is not None and not any(needed(cluster.node(n)) for n in down):
        print(f"warning: left out of this run (not running, and --limit does not need them): {said}",
              file=sys.stderr)
        return _ask_running(v, [n for n in names if n not in down])
    if down:
        hint = "" if needed is None else " (--limit needs them)"
        raise InventoryError(f"machines not running{hint}: {said}. Fix: `vagrant up` (or `make up`) in "
                             "the repository, then rerun; or, for an urgent change elsewhere, name only "
                             "the machines you need with --limit (say --limit masters).") from None
    raise InventoryError(f"`vagrant ssh-config` failed ({exc}) although every machine is running. "
                         "Fix: `vagrant reload` them.") from None


def _ask_running(v, up: list[str]) -> dict[str, dict]:
    """`vagrant ssh-config` for the running machines only (``up``), the down ones left out."""
    try:
        found = parse_ssh_config(v._run_vagrant_command(["ssh-config", *up])) if up else {}
    except Exception as again:
        raise InventoryError(f"`vagrant ssh-config` failed for the running machines ({again}). "
                             "Fix: `vagrant reload` them.") from None
    lacking = [n for n in up if n not in found]
    if lacking:
        raise InventoryError(f"`vagrant ssh-config` did not list {', '.join(lacking)}. "
                             "Fix: `vagrant reload` them.") from None
    return {n: found[n] for n in up}


def vagrant_connections(cluster: Cluster, vagrant_factory: Callable | None = None, *,
                        probes: Mapping[str, Probe] | None = None, dotfile_dir: Path | None = None,
                        vagrantfile: Path | None = None,
                        needed: Callable[[Node], bool] | None = None) -> dict[str, dict]:
    """{node: pyinfra SSH data} from the cache when every fingerprint matches, else from one
    `vagrant ssh-config` call (then the cache is rewritten)."""
    if vagrant_factory is None:
        import vagrant  # python-vagrant; imported late so tests and static use need no Vagrant

        def vagrant_factory():
            return vagrant.Vagrant(root=str(REPO_ROOT), quiet_stderr=True)

    probes = PROBES if probes is None else probes
    dotfile_dir = default_dotfile_dir() if dotfile_dir is None else dotfile_dir
    vagrantfile = default_vagrantfile() if vagrantfile is None else vagrantfile
    names = [n.name for n in cluster.nodes]
    path = cache_file(cluster)
    key, prints = "", None
    if os.environ.get(CACHE_ENV, "").lower() == "off":
        reason = f"{CACHE_ENV}=off"
    else:
        # Fingerprints are taken before Vagrant is asked: a machine that restarts in between is
        # stored with its old fingerprint, so the next run asks again instead of trusting it.
        try:
            key = cache_key(cluster, vagrantfile, dotfile_dir)
            prints = fingerprints(names, dotfile_dir, probes)
        except (OSError, NotRunning) as exc:
            reason = f"no fingerprint: {exc}"
        else:
            cached, reason = _cached_connections(_read_cache(path), key, prints)
            if cached is not None:
                _note("cache")
                return {n: {**SSH_DEFAULTS, **cached[n]} for n in names}
    _note("vagrant", reason)  # before asking: a benchmark or the debug line sees why, even on failure
    found = _ask_vagrant(cluster, vagrant_factory, needed)
    if prints is not None:
        _write_cache(path, {"version": CACHE_VERSION, "key": key, "machines": prints, "connections": found})
    # Throwaway machines get new host keys on every `vagrant up`: keep them out of known_hosts.
    return {n: {**SSH_DEFAULTS, **found[n]} for n in names if n in found}


def _cached_connections(stored: dict | None, key: str, prints: dict[str, str]) -> tuple[dict | None, str]:
    """The stored connections when the key and every machine's fingerprint match, else (None, why)."""
    if stored is None:
        return None, "no usable cache"
    if stored["key"] != key:
        return None, "cluster file, Vagrantfile or environment changed"
    changed = [n for n in prints if stored["machines"].get(n) != prints[n]]
    if changed:
        return None, f"machines changed: {', '.join(changed)}"
    if not all(isinstance(stored["connections"].get(n), dict) for n in prints):
        return None, "cache lacks a machine"
    return stored["connections"], ""


def connections(cluster: Cluster, limit: list[str] | None = None,
                needed: Callable[[Node], bool] | None = None) -> dict[str, dict]:
    """{node: pyinfra SSH data}. ``limit``: the run's --limit patterns; a machine that is down
    and not selected by them is left out (with a warning) instead of stopping the run.
    ``needed`` (instead of ``limit``) says which nodes may not be down: ``kthw health`` needs
    none, and reports a machine that is down."""
    mode = os.environ.get("KTHW_INVENTORY", "")
    if mode == "static" or (not mode and all(n.ssh for n in cluster.nodes)):
        _note("static")
        return static_connections(cluster)
    if mode not in ("", "vagrant"):
        raise InventoryError(f"KTHW_INVENTORY={mode!r} is not known. Fix: use vagrant or static.")
    return vagrant_connections(cluster, needed=needed if needed is not None else needed_by(limit or []))
