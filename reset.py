"""Take every machine back to before the deploy:  pyinfra inventory.py reset.py

Services stopped and disabled, the pods removed, our files, binaries, data dirs (etcd's too),
CNI state, iptables rules and routes removed (kthw/reset.py lists all of it); each machine says
what it removed. Without -y pyinfra shows the plan and asks first. --limit resets only some
machines (resetting one master of a running cluster costs etcd its quorum with two masters).

The local PKI and kubeconfigs stay (a deploy afterwards builds the same cluster identity anew);
--data reset_local_state=yes moves them aside to .kthw/<cluster>/reset-<UTC time>/ as well.
Backups in .kthw/<cluster>/backups/ always stay.
"""

import datetime as dt
import os
import shlex

from pyinfra import host
from pyinfra.operations import python, server

import kthw.reset
from kthw.model import load_cluster
from kthw.reset import reset_script

cluster = load_cluster(host.data.kthw_cluster)
node = cluster.node(host.data.kthw_node)

removed = server.shell(name="reset | services, pods, files, data, network state removed",
                       commands=[f"sh -c {shlex.quote(reset_script(cluster, node))}"])


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


if str(host.data.get("reset_local_state", "")).lower() in ("yes", "true", "1"):
    python.call(name="reset | local PKI and kubeconfigs moved aside", function=local_state_aside)
