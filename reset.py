"""Take every machine back to before the deploy:  pyinfra inventory.py reset.py

Services stopped and disabled, the pods removed, our files, binaries, data dirs (etcd's too),
CNI state, iptables rules and routes removed (kthw/reset.py lists all of it); each machine says
what it removed. Without -y pyinfra shows the plan and asks first. --limit resets only some
machines (resetting one master of a running cluster costs etcd its quorum with two masters).

The local PKI and kubeconfigs stay (a deploy afterwards builds the same cluster identity anew);
--data reset_local_state=yes moves them aside to .kthw/<cluster>/reset-<UTC time>/ as well, and
so needs every machine in the run (it ends the whole cluster's identity here). Backups in
.kthw/<cluster>/backups/ always stay. Before any host is touched (kthw/preflight.py), each
Kubernetes node must hold this cluster's CA: a reset never removes another cluster's etcd data
because an address or KTHW_CLUSTER was mixed up.
"""

import datetime as dt
import os
import shlex

from pyinfra import host
from pyinfra.operations import python, server

import kthw.reset
from kthw.preflight import Playbook, playbook, yes
from kthw.reset import reset_script

LOCAL_STATE = "reset_local_state"
book = (Playbook(f"reset.py with {LOCAL_STATE}=yes", whole=True,
                 why_whole="moves the whole cluster's PKI and kubeconfigs aside")
        if yes(host, LOCAL_STATE) else Playbook("reset.py"))
cluster, node = playbook(host, book)
user = host.data.get("ssh_user") or "root"

removed = server.shell(name="reset | services, pods, files, data, network state removed",
                       commands=[f"sh -c {shlex.quote(reset_script(cluster, node, user))}"])


def report() -> None:
    lines = [line.removeprefix("removed: ") for line in removed.stdout.splitlines() if line.startswith("removed: ")]
    print(f"[{host.name}] removed {len(lines)}: " + ("; ".join(lines) if lines else "nothing (already reset)"))


python.call(name="reset | what was removed", function=report)


def local_state_aside() -> None:
    if kthw.reset.LOCAL_STATE_MOVED:  # once per run, by whichever machine gets here first
        return
    kthw.reset.LOCAL_STATE_MOVED.append(True)
    aside = cluster.state_dir / f"reset-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    moved = []
    for sub in ("pki", "kubeconfigs"):
        if (cluster.state_dir / sub).exists():
            aside.mkdir(mode=0o700, exist_ok=True)
            os.replace(cluster.state_dir / sub, aside / sub)
            moved.append(sub)
    print(f"local state: {', '.join(moved) or 'nothing'} moved to {aside}")


if yes(host, LOCAL_STATE):
    python.call(name="reset | local PKI and kubeconfigs moved aside", function=local_state_aside)
