"""HAProxy in front of every apiserver, in two places:

- on the load balancer, at ``<its IP>:6443``: the operator's entrance, as in the guide;
- on every Kubernetes node, at ``127.0.0.1:7445``: its kubelet's and kube-proxy's own way to the
  API, so that no single machine stands between a node and the apiservers (the idea of Talos'
  KubePrism, kubespray's local nginx, k0s' node-local load balancing). A master prefers its own
  apiserver and turns to the others only while that one is not ready.

HAProxy rather than another proxy: the load balancer runs it already (one tool, one config
language, one check with ``haproxy -c``), it health-checks ``/readyz`` over TLS while passing
TLS through untouched, and its master-worker mode reloads a changed config without dropping
open connections (kubelet watches stay up while masters come and go).

Operations, in order: haproxy.cfg (checked by ``haproxy -c``) → haproxy running (reloaded,
never restarted, when the config changes).
"""

from __future__ import annotations

from dataclasses import dataclass

from kthw import components
from kthw.context import HostContext, Wants
from kthw.model import API_PORT, NODE_API_PORT
from kthw.ops import placed, service_running
from kthw.paths import HAPROXY_CFG

COMPONENT = components.APISERVER_PROXY


@dataclass(frozen=True)
class Backend:
    name: str
    address: str  # ip:port
    backup: bool = False  # used only while no preferred server is ready


def listen_address(ctx: HostContext) -> str:
    """Where this host's HAProxy listens: the load balancer's IP (or every address, where it may
    hold the virtual IP) and the API port there, for operators; the loopback elsewhere, for the
    node itself (the apiserver on a master holds port 6443 on every address)."""
    if ctx.is_loadbalancer:
        # With a virtual IP, on every address: the VIP comes and goes with keepalived, and
        # HAProxy must answer on it the moment it arrives.
        return f"*:{API_PORT}" if ctx.node.api_vip else f"{ctx.node.ip}:{API_PORT}"
    return f"127.0.0.1:{NODE_API_PORT}"


def backends(ctx: HostContext) -> list[Backend]:
    """Every apiserver; on a master its own first, the others as backups."""
    own = ctx.node.name if ctx.is_master else None
    return [Backend(m.name, f"{m.ip}:{API_PORT}", backup=own is not None and m.name != own)
            for m in ctx.cluster.masters]


def wants(ctx: HostContext) -> Wants:
    w = Wants(services=list(COMPONENT.package_units), packages=["haproxy"])
    w.files["config"] = [ctx.template_file(HAPROXY_CFG, listen=listen_address(ctx), backends=backends(ctx))]
    return w


def deploy(ctx: HostContext, w: Wants) -> None:
    snap = ctx.snapshot
    # A config that haproxy rejects never replaces the working one.
    config = placed(w.files["config"], snap, check="haproxy -c -q -f {path}",
                    name="apiserver proxy | haproxy.cfg (checked by haproxy -c)")
    # Reload, not restart: open connections (kubectl and kubelet watches) survive a config change.
    service_running("haproxy", snap, restart_on=[config], graceful=True, name="apiserver proxy | haproxy running")
