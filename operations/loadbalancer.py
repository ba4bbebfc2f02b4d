"""HAProxy on the load balancer: TCP on :6443 to every apiserver, health-checked."""

from __future__ import annotations

from kthw import components
from kthw.context import HostContext, Wants
from kthw.ops import (
    placed,
    service_running,
)
from kthw.paths import HAPROXY_CFG

COMPONENT = components.LOADBALANCER


def wants(ctx: HostContext) -> Wants:
    w = Wants(services=list(COMPONENT.package_units))
    w.files["config"] = [ctx.template_file(HAPROXY_CFG)]
    return w


def deploy(ctx: HostContext, w: Wants) -> None:
    snap = ctx.snapshot
    # A config that haproxy rejects never replaces the working one.
    config = placed(w.files["config"], snap, check="haproxy -c -q -f {path}",
                    name="loadbalancer | haproxy.cfg (checked by haproxy -c)")
    # Reload, not restart: open kubectl watches through the proxy survive a config change.
    service_running("haproxy", snap, restart_on=[config], graceful=True, name="loadbalancer | haproxy running")
