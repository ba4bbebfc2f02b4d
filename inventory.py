"""pyinfra inventory: groups loadbalancer, masters and workers from the cluster model,
connection data from one `vagrant ssh-config` call, cached in the state dir while no machine
changed (see kthw/inventory.py; KTHW_INVENTORY_CACHE=off, KTHW_INVENTORY_DEBUG=1), or from the
model's `ssh` entries. A stopped machine stops every run, except one whose --limit does not
need it (then it is left out with a warning).

    pyinfra inventory.py deploy.py
    pyinfra inventory.py fact kthw.facts.KthwServices
"""

import sys

from kthw.inventory import InventoryError, connections, groups, limit_patterns
from kthw.model import ClusterConfigError, load_cluster

try:
    _cluster = load_cluster()
    for _warning in _cluster.warnings:
        print(f"warning: {_warning}", file=sys.stderr)
    # A machine that is down stops the run, unless this run's --limit leaves it out anyway.
    _groups = groups(_cluster, connections(_cluster, limit=limit_patterns(sys.argv)))
except (ClusterConfigError, InventoryError) as _exc:
    print(f"error: {_exc}", file=sys.stderr)
    sys.exit(2)

loadbalancer = _groups["loadbalancer"]
masters = _groups["masters"]
workers = _groups["workers"]
