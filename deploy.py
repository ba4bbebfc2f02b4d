"""The whole cluster, stage by stage:  pyinfra inventory.py deploy.py

Each host runs this file once, concurrently with the others, with the components its role
gets (``operations/__init__.py`` says which). pyinfra orders operations across hosts by the
call sites they share, not by source order, so a barrier (one no-op operation every host calls
from the same line) closes each stage that another group waits on.

    1. every node    hostname, /etc/hosts, swap off, kernel prerequisites, packages
    2. masters       etcd (TLS, initial cluster from the model), healthy before going on;
                     a member with enough free pages defragmented, one at a time
    -- barrier --
    3. masters       kube-apiserver, kube-controller-manager, kube-scheduler; the timer of the
                     scheduled etcd snapshots (backup.scheduled; removed when turned off)
       every node    HAProxy in front of every apiserver: on the load balancer for operators,
                     on each Kubernetes node's loopback (127.0.0.1:7445) for its kubelet and
                     kube-proxy
       loadbalancers keepalived: the virtual IP (network.api_vip) where HAProxy works
    -- barrier --
       first master  etcd members of masters gone from the cluster file removed (HAProxy no
                     longer sends requests to them); in step 2 of an encryption-key rotation,
                     every Secret rewritten with the new key (kthw/key_rotation.py); the
                     add-ons the cluster lacks applied: RBAC for apiserver -> kubelet, the CNI
                     add-on, CoreDNS (their pods start on each node as it registers)
    4. masters and   containerd, runc, CNI plugins, kubelet, kube-proxy (+ bridge CNI routes);
       workers       masters register tainted: only the CNI and kube-system pods run there
       each node,    a node whose binaries change (an upgrade) restarts only in its turn: the
       in turn       first master drains it before, waits until it is Ready and uncordons it
                     after (two barriers per node)
    -- barrier --
       load balancer an etcd-only member taken out of the file (and so out of etcd): stopped
                     and removed
    5. first master  changed add-ons applied (their new pods find what they need on the nodes),
                     the masters labelled control-plane, nodes gone from the cluster file
                     drained and deleted
"""

from pyinfra import host
from pyinfra.operations import server

from operations import addons, apiserver_proxy, base, control_plane, etcd, keepalived, node, snapshots, upgrade
from operations.plan import host_plan

ctx, wants = host_plan(host)

base.deploy(ctx, wants[base], packages=[p for w in wants.values() for p in w.all_packages()])
if etcd in wants and ctx.node.runs_etcd:
    etcd.deploy(ctx, wants[etcd])
    etcd.upkeep(ctx)

server.shell(name="--- barrier: etcd is up ---", commands=[])

if control_plane in wants:
    control_plane.deploy(ctx, wants[control_plane])
if snapshots in wants:  # after the encryption config it copies beside each snapshot
    snapshots.deploy(ctx, wants[snapshots])
if apiserver_proxy in wants:
    apiserver_proxy.deploy(ctx, wants[apiserver_proxy])
if keepalived in wants:
    keepalived.deploy(ctx, wants[keepalived])

server.shell(name="--- barrier: control plane is up ---", commands=[])

if etcd in wants and ctx.is_first_master:
    etcd.departed_members_removed(ctx)
if control_plane in wants and ctx.is_first_master:
    control_plane.secrets_rewritten(ctx)  # step 2 of an encryption-key rotation
if addons in wants:
    rendered = addons.deploy(ctx, wants[addons])  # the add-ons a new cluster lacks: applied now

if node in wants:
    owed = node.deploy(ctx, wants[node])
    upgrade.deploy(ctx, owed)

server.shell(name="--- barrier: nodes are up ---", commands=[])

if etcd in wants and not ctx.node.runs_etcd:  # a load balancer whose etcd-only member was removed
    etcd.retired(ctx)

if addons in wants:
    addons.changes_applied(ctx, rendered)
    addons.nodes_reconciled(ctx)
