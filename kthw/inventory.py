"""Build pyinfra inventory groups from the cluster model and where the machines are.

- Vagrant (default): one ``vagrant status`` call, then one ``vagrant ssh-config`` for all the
  running machines (python-vagrant). Missing or stopped machines fail fast, named, with the
  command that fixes it.
- Static: machines not made by Vagrant; every node carries ``ssh: {host, port, user, key}``
  in the cluster file (KTHW_INVENTORY=static, or automatic when every node has one).

Vagrant's throwaway machines get new host keys on every ``vagrant up``: theirs never go into the
user's known_hosts. Static machines are real ones: their host keys are checked as usual.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from kthw.model import REPO_ROOT, Cluster, Node

SSH_DEFAULTS = {"ssh_known_hosts_file": "/dev/null", "ssh_strict_host_key_checking": "no"}
GROUPS = {"loadbalancer": "loadbalancer", "master": "masters", "worker": "workers"}


class InventoryError(Exception):
    pass


def host_data(cluster: Cluster, node: Node, connection: dict) -> dict:
    data = dict(connection)
    data["kthw_node"] = node.name
    data["kthw_cluster"] = str(cluster.source)
    data["kthw_role"] = node.role
    data["private_ip"] = str(node.ip)
    data["_sudo"] = connection.get("ssh_user") != "root"
    return data


def groups(cluster: Cluster, connections: dict[str, dict], prefix: str = "") -> dict[str, list]:
    """{group: [(host name, data)]} in model order."""
    out: dict[str, list] = {g: [] for g in GROUPS.values()}
    for node in cluster.nodes:
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


def vagrant_connections(cluster: Cluster, vagrant_factory: Callable | None = None) -> dict[str, dict]:
    """Two Vagrant calls whatever the node count: `vagrant status`, then one `vagrant ssh-config`
    for all machines (each call starts Ruby, about a CPU second)."""
    if vagrant_factory is None:
        import vagrant  # python-vagrant; imported late so tests and static use need no Vagrant

        def vagrant_factory():
            return vagrant.Vagrant(root=str(REPO_ROOT), quiet_stderr=True)

    v = vagrant_factory()
    try:
        states = {s.name: s.state for s in v.status()}
    except Exception as exc:  # python-vagrant raises CalledProcessError, or OSError without vagrant
        raise InventoryError(f"`vagrant status` failed ({exc}). Fix: install Vagrant and run "
                             "`vagrant up` (or `make up`) in the repository.") from None
    down = [f"{n.name} ({states.get(n.name, 'not defined')})" for n in cluster.nodes
            if states.get(n.name) != "running"]
    if down:
        raise InventoryError(f"machines not running: {', '.join(down)}. Fix: `vagrant up` (or `make up`) "
                             "in the repository, then rerun.")
    found = parse_ssh_config(v.ssh_config())
    missing = [n.name for n in cluster.nodes if n.name not in found]
    if missing:
        raise InventoryError(f"`vagrant ssh-config` did not list {', '.join(missing)}. Fix: `vagrant reload` them.")
    # Throwaway machines get new host keys on every `vagrant up`: keep them out of known_hosts.
    return {n.name: {**SSH_DEFAULTS, **found[n.name]} for n in cluster.nodes}


def connections(cluster: Cluster) -> dict[str, dict]:
    mode = os.environ.get("KTHW_INVENTORY", "")
    if mode == "static" or (not mode and all(n.ssh for n in cluster.nodes)):
        return static_connections(cluster)
    if mode not in ("", "vagrant"):
        raise InventoryError(f"KTHW_INVENTORY={mode!r} is not known. Fix: use vagrant or static.")
    return vagrant_connections(cluster)
