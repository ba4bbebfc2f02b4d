"""Run one command on a node over SSH, with the connection data the inventory gives pyinfra.

For the operator commands that read hosts outside a deploy (``kthw pki adopt``, ``kthw pki
rotate-ca``): one ``ssh`` per node, output as bytes, nothing printed.
"""

from __future__ import annotations

import subprocess


class SshError(Exception):
    """The command failed or the node did not answer (the message says which and why)."""


def ssh_argv(connection: dict, remote: str) -> list[str]:
    """The ``ssh`` command line for a pyinfra connection dict (ssh_hostname, ssh_user, ...)."""
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if connection.get("ssh_strict_host_key_checking") == "no":
        cmd += ["-o", "StrictHostKeyChecking=no"]
    if connection.get("ssh_known_hosts_file"):
        cmd += ["-o", f"UserKnownHostsFile={connection['ssh_known_hosts_file']}"]
    if connection.get("ssh_key"):
        cmd += ["-i", str(connection["ssh_key"])]
    # "--": the destination is never read as an option, whatever the cluster file holds.
    return [*cmd, "-p", str(connection.get("ssh_port", 22)), "--",
            f"{connection.get('ssh_user', 'root')}@{connection['ssh_hostname']}", remote]


def as_root(connection: dict, command: str) -> str:
    """``command`` as root on the node: through ``sudo -n`` unless the SSH user is root (a node
    reached as root may have no sudo at all).

    >>> as_root({"ssh_user": "root"}, "id -u")
    'id -u'
    >>> as_root({"ssh_user": "vagrant"}, "id -u")
    'sudo -n id -u'
    """
    return command if connection.get("ssh_user", "root") == "root" else f"sudo -n {command}"


def ssh_run(name: str, connection: dict, remote: str, timeout: int = 120) -> bytes:
    """stdout of ``remote`` on the node; SshError with the end of stderr when it fails."""
    try:
        out = subprocess.run(ssh_argv(connection, remote), capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SshError(f"{name}: {exc}") from None
    if out.returncode != 0:
        raise SshError(f"{name}: {out.stderr.decode(errors='replace').strip()[-500:]}")
    return out.stdout
