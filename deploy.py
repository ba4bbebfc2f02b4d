"""The whole cluster, stage by stage:  pyinfra inventory.py deploy.py

Each host runs this file once, concurrently with the others. pyinfra orders operations
across hosts by the call sites they share, not by source order, so a barrier (one no-op
operation every host calls from the same line) closes each stage that another group waits on.

    1. every node    hostname, /etc/hosts, swap off, kernel prerequisites, packages
    2. masters       etcd (TLS, initial cluster from the model), healthy before going on
    -- barrier --
    3. masters       kube-apiserver, kube-controller-manager, kube-scheduler
       loadbalancer  HAProxy in front of every apiserver
    -- barrier --
    4. workers       containerd, runc, CNI plugins, kubelet, kube-proxy (+ bridge CNI routes)
    -- barrier --
    5. first master  RBAC for apiserver -> kubelet, the CNI add-on, CoreDNS
"""

from pyinfra import host
from pyinfra.operations import server

from kthw.deploy import host_context
from operations import addons, base, control_plane, etcd, loadbalancer, worker

ctx, wants = host_context(host, [base, etcd, control_plane, loadbalancer, worker, addons])

base.deploy(ctx, wants[base])
if ctx.is_master:
    etcd.deploy(ctx, wants[etcd])

server.shell(name="--- barrier: etcd is up ---", commands=[])

if ctx.is_master:
    control_plane.deploy(ctx, wants[control_plane])
if ctx.is_loadbalancer:
    loadbalancer.deploy(ctx, wants[loadbalancer])

server.shell(name="--- barrier: control plane is up ---", commands=[])

if ctx.is_worker:
    worker.deploy(ctx, wants[worker])

server.shell(name="--- barrier: workers are up ---", commands=[])

if ctx.is_first_master:
    addons.deploy(ctx, wants[addons])
