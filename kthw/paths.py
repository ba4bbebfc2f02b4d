"""Where things live on a host, defined once. Every Python module that names a host path takes it
from here (the templates under files/ are laid out like the paths they render to).

Grouped by owner, in the order a host gets them.
"""

from __future__ import annotations

# --- every machine
HOSTS = "/etc/hosts"
HOSTNAME = "/etc/hostname"
FSTAB = "/etc/fstab"
SYSCTL_CONF = "/etc/sysctl.d/90-kubernetes.conf"
MODULES_CONF = "/etc/modules-load.d/kubernetes.conf"
BIN_DIR = "/usr/local/bin"
RUNC = "/usr/local/sbin/runc"  # where containerd's default config looks first
UNIT_DIR = "/etc/systemd/system"

# --- our own bookkeeping (kthw.ops, kthw.facts)
KTHW_DIR = "/var/lib/kthw"
HASH_CACHE = f"{KTHW_DIR}/hash-cache.json"  # (size, mtime, inode) -> sha256 of placed files
APPLIED_DIR = f"{KTHW_DIR}/applied"  # when each service was last restarted, each add-on applied
IMAGES_DIR = f"{KTHW_DIR}/images"  # offline image archives (artifacts.images)
BACKUP_DIR = f"{KTHW_DIR}/backup"  # backup.py's and restore.py's snapshot on a master
# The SSH user's private upload folder (relative: in their home; 0700): uploads land here before
# a root `cp` moves them (pyinfra's default temp dir is a shared /tmp).
UPLOAD_DIR = ".kthw-upload"

# --- etcd (masters, and a load balancer's etcd-only member)
ETCD_DIR = "/etc/etcd"
ETCD_CA = f"{ETCD_DIR}/etcd-ca.crt"  # etcd's own CA (trust bundle), not the cluster's
ETCD_DATA = "/var/lib/etcd"
ETCD_RESTORE_ASIDE = "/var/lib/etcd.before-restore-"  # + time: data a restore kept aside

# --- scheduled etcd snapshots (masters; operations/snapshots.py)
ETCD_SNAPSHOTS = "/var/lib/etcd-snapshots"  # the timer's snapshots, in backup.py's format (root only, 0700)
ETCD_SNAPSHOT_SCRIPT = "/usr/local/sbin/kthw-etcd-snapshot"  # takes one, prunes to backup.keep
TIMER_STAMPS = "/var/lib/systemd/timers"  # where systemd records a Persistent timer's last run

# --- the control plane (masters)
K8S_DIR = "/var/lib/kubernetes"  # configs and kubeconfigs the control plane reads
K8S_PKI = f"{K8S_DIR}/pki"  # certificates (and on masters the CA keys)
CLUSTER_CA = f"{K8S_PKI}/ca.crt"  # the cluster CA bundle: on every Kubernetes node
ENCRYPTION_CONFIG = f"{K8S_DIR}/encryption-config.yaml"
CONTROLLER_MANAGER_KUBECONFIG = f"{K8S_DIR}/kube-controller-manager.kubeconfig"
SCHEDULER_KUBECONFIG = f"{K8S_DIR}/kube-scheduler.kubeconfig"
ETC_K8S = "/etc/kubernetes"
ADMIN_KUBECONFIG = f"{ETC_K8S}/admin.kubeconfig"  # kubectl on a master, to its own apiserver
ADDONS_DIR = f"{ETC_K8S}/addons"  # the manifests the first master applies
POD_SUBNETS_RECORD = f"{ETC_K8S}/pod-subnets.yaml"  # each node's pod subnet, as the deploy keeps them
K8S_LOG_DIR = "/var/log/kubernetes"

# --- every Kubernetes node
CONTAINERD_DIR = "/etc/containerd"
CERTS_D = f"{CONTAINERD_DIR}/certs.d"  # containerd's per-registry hosts.toml
CONTAINERD_STATE = "/var/lib/containerd"  # images, snapshots (containerd's own)
CONTAINERD_RUN = "/run/containerd"
CONTAINERD_SOCK = f"{CONTAINERD_RUN}/containerd.sock"
CNI_STATE = "/var/lib/cni"  # the CNI plugins' own (IP allocations)
CRICTL_CONF = "/etc/crictl.yaml"
CNI_DIR = "/opt/cni"
CNI_BIN = f"{CNI_DIR}/bin"
CNI_ETC = "/etc/cni"
CNI_CONF = f"{CNI_ETC}/net.d"
# Ours, last in Weave Net's CNI chain: clears a stale ARP entry for a reused pod address
CNI_NEIGH_FLUSH = f"{CNI_BIN}/kthw-neigh-flush"
KUBELET_DIR = "/var/lib/kubelet"
KUBELET_PKI = f"{KUBELET_DIR}/pki"
KUBELET_KUBECONFIG = f"{KUBELET_DIR}/kubeconfig"
KUBELET_CONFIG = f"{KUBELET_DIR}/kubelet-config.yaml"
KUBE_PROXY_DIR = "/var/lib/kube-proxy"
KUBE_PROXY_KUBECONFIG = f"{KUBE_PROXY_DIR}/kubeconfig"
WEAVE_DATA = "/var/lib/weave"
WEAVE_TARGETS_URL = "http://127.0.0.1:6784/status/targets"  # the local Weave router: whom it connects to
WEAVE_REPORT_URL = "http://127.0.0.1:6784/report"  # its state as JSON (connections and their state)

# --- the apiserver proxy (load balancers and every Kubernetes node)
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
# --- two load balancers sharing network.api_vip
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"


def unit_name(unit: str) -> str:
    """systemd's full name of ``unit``: a bare name is a service, a name with its type (a
    ``.timer``) stays as it is.

    >>> unit_name("etcd"), unit_name("kthw-etcd-snapshot.timer")
    ('etcd.service', 'kthw-etcd-snapshot.timer')
    """
    return unit if "." in unit else f"{unit}.service"


def unit_file(unit: str) -> str:
    """The unit file the deploy writes for ``unit``.

    >>> unit_file("etcd")
    '/etc/systemd/system/etcd.service'
    """
    return f"{UNIT_DIR}/{unit_name(unit)}"


# --- names the deploy marks things with
MANAGED_MARK = "# Managed by kthw-pyinfra"  # first line of the files we write (hosts.toml: how we know ours)
DRAIN_MARK = "kthw.io/drained-for-upgrade"  # a Node the deploy drained for an upgrade
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
