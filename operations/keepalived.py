"""keepalived on two load balancers: the virtual IP of ``network.api_vip`` (the operator's
entrance, in the apiserver certificate and the operator's kubeconfig) stays on whichever runs a
working HAProxy; kubeadm's HA guide describes the same pair. Nodes do not use it: each reaches
the apiservers through its own local proxy (operations/apiserver_proxy.py).

Operations, in order: keepalived.conf (checked by ``keepalived -t``) → keepalived running
(reloaded on change: the holder keeps the address). On a load balancer of a cluster without
the virtual IP: keepalived stopped and its config removed, if a former deploy left them.
"""

from __future__ import annotations

import hashlib

from kthw import components
from kthw.context import DeployRefused, HostContext, Wants
from kthw.ops import command_when, placed, service_running
from kthw.paths import KEEPALIVED_CONF

COMPONENT = components.KEEPALIVED
UNIT = COMPONENT.package_units[0]
# `keepalived -t` on a config; keepalived 2.2.7 (Debian 12) ends a passing test of a config
# with a script_user by SIGTERM (exit 143; upstream issue acassen/keepalived#2617, fixed in
# 2.2.8), so 143 counts as a pass; a config error still exits 1-6.
CONFIG_TEST = "keepalived -t -f {path} || [ $? -eq 143 ]"


def router_id(cluster_name: str) -> int:
    """The VRRP router id (1-255), derived from the cluster's name so two clusters on one
    network are unlikely to share it.

    >>> router_id("kubernetes-the-hard-way")
    147
    """
    return int(hashlib.sha256(cluster_name.encode()).hexdigest(), 16) % 255 + 1


def interface(ctx: HostContext) -> str:
    """The interface holding the node's address (from the host's snapshot); the virtual IP goes
    beside it."""
    if "interface_of" not in ctx.facts:  # planning which files exist: the name is not needed yet
        return "IFACE"
    if not ctx.facts["interface_of"]:
        raise DeployRefused(f"{ctx.node.name}: no network interface holds {ctx.node.ip} (its address in the "
                            "cluster file), so keepalived has nowhere to put the virtual IP. Nothing was changed. "
                            "Fix: give the machine that address, or correct nodes[].ip.")
    return ctx.facts["interface_of"]


def wants(ctx: HostContext) -> Wants:
    if not ctx.node.api_vip:
        return Wants(queries={"units_left": [UNIT]})  # see retired()
    lbs = ctx.cluster.loadbalancers
    w = Wants(services=[UNIT], packages=["keepalived"], queries={"interface_of": str(ctx.node.ip)})
    w.files["config"] = [ctx.template_file(
        KEEPALIVED_CONF, mode=0o640, vip=ctx.node.api_vip, prefix=ctx.cluster.node_network.prefixlen,
        interface=interface(ctx), router_id=router_id(ctx.cluster.name),
        priority=150 if ctx.node == lbs[0] else 100, peer=next(lb for lb in lbs if lb != ctx.node))]
    return w


def deploy(ctx: HostContext, w: Wants) -> None:
    snap = ctx.snapshot
    if not ctx.node.api_vip:
        retired(ctx)
        return
    config = placed(w.files["config"], snap, check=CONFIG_TEST,
                    name="keepalived | keepalived.conf (checked by keepalived -t)")
    # Reload, not restart: a restart would give the address up for a moment.
    service_running(UNIT, snap, restart_on=[config], graceful=True, name="keepalived | running")


def retired(ctx: HostContext) -> None:
    """On a load balancer of a cluster without ``network.api_vip``: a keepalived a former deploy
    left running (or enabled) is stopped and disabled and its config removed, so the address goes."""
    command_when(f"systemctl disable --now {UNIT} && rm -f {KEEPALIVED_CONF}",
                 always=UNIT in (ctx.snapshot.query("units_left") or ()),
                 name="keepalived | stopped and removed (no virtual IP in the cluster file)")
