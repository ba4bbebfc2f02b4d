"""HAProxy on the load balancer: TCP on :6443 to every apiserver, health-checked."""

from __future__ import annotations

from kthw.context import HostContext, Wants
from kthw.ops import command_when, files_synced, service_running


def wants(ctx: HostContext) -> Wants:
    w = Wants(services=["haproxy"])
    w.files["config"] = [ctx.template_file("/etc/haproxy/haproxy.cfg")]
    return w


def deploy(ctx: HostContext, w: Wants) -> None:
    snap = ctx.snapshot
    config = files_synced(w.files["config"], snap, name="loadbalancer | haproxy.cfg")
    # A broken config must not take the running proxy down: check it before the restart.
    command_when("haproxy -c -q -f /etc/haproxy/haproxy.cfg", when=[config],
                 name="loadbalancer | haproxy.cfg is valid")
    service_running("haproxy", snap, restart_on=[config], name="loadbalancer | haproxy running")
