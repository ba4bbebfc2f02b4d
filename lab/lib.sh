# Shared settings of the LXC lab scripts (sourced by lab/box, lab/net, lab/up, lab/down).
# Everything the lab creates is named here; `lab/down` removes exactly these things.
# shellcheck shell=bash

LAB_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_SRC/.." && pwd)

LAB_DIR=${KTHW_LAB_DIR:-$HOME/.cache/kthw/lab}
# Cluster network (eth1 of every node); the Vagrantfile reads the same variable.
LAB_BRIDGE=${KTHW_LAB_BRIDGE:-kthw0}
# Management network (eth0 of every node, DHCP from our dnsmasq, no NAT); the Vagrantfile
# links net.0 to the same bridge.
MGMT_BRIDGE=${KTHW_LAB_MGMT_BRIDGE:-kthwbr0}
MGMT_ADDR=${KTHW_LAB_MGMT_ADDR:-10.0.3.1/24}
BOX_NAME=kthw/debian-bookworm-lxc

# Kernel settings kubelet writes when they differ (setupKernelTunables). They are global to
# the machine's kernel, so each node gets read-only files with these values bound over the
# /proc/sys paths (mount entries in the Vagrantfile's lxc block): kubelet reads them as set
# and the host keeps its own values. Keep the key list in step with the Vagrantfile.
LAB_SYSCTLS=(
    kernel.panic=10
    kernel.panic_on_oops=1
    vm.overcommit_memory=1
    vm.panic_on_oom=0
    kernel.keys.root_maxkeys=1000000
    kernel.keys.root_maxbytes=25000000
)

PY=$REPO/.venv/bin/python

# The cluster model: the scripts and Vagrant run in the repository, so make a relative
# KTHW_CLUSTER absolute against the caller's directory first.
if [ -n "${KTHW_CLUSTER:-}" ]; then
    KTHW_CLUSTER=$(realpath -e "$KTHW_CLUSTER") || { echo "lab: KTHW_CLUSTER not found" >&2; exit 1; }
    export KTHW_CLUSTER
fi

log() { printf '%s lab: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (LXC containers, bridges and dnsmasq need it)"; }

# The node network of the cluster model ($KTHW_CLUSTER or cluster.yaml), e.g. 192.168.56.0/24.
node_network() {
    [ -x "$PY" ] || die "$PY missing: run scripts/setup (make setup) first"
    (cd "$REPO" && "$PY" -c 'from kthw.model import load_cluster; print(load_cluster().node_network)')
}

# First host address of a network with its prefix: 192.168.56.0/24 -> 192.168.56.1/24.
first_address() {
    "$PY" -c 'import ipaddress,sys; n=ipaddress.ip_network(sys.argv[1]); print(f"{next(n.hosts())}/{n.prefixlen}")' "$1"
}

# Node names of the model, one per line.
node_names() {
    (cd "$REPO" && "$PY" -c 'from kthw.model import load_cluster
for n in load_cluster().nodes: print(n.name)')
}

# "name role" per node of the model.
node_roles() {
    (cd "$REPO" && "$PY" -c 'from kthw.model import load_cluster
for n in load_cluster().nodes: print(n.name, n.role)')
}

vagrant_cmd() {
    (cd "$REPO" && VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=lxc vagrant "$@")
}
