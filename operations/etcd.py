"""etcd on every master (and on a load balancer given ``etcd: true``): binaries → TLS material
→ data dir → unit → running → healthy.

One member per master (plus the optional etcd-only member on the load balancer: the third vote
of a two-master cluster), TLS for clients and peers: each member has its own server+client
certificate from etcd's own CA (the only CA it trusts), valid for its own address only, and
peers must present one of these (CN etcd-server), never another etcd-CA client certificate;
initial cluster from the model. Health is checked after every (re)start, before the control
plane is touched.

Upkeep: a member whose database file has ``etcd.defrag_free_mib`` of free pages (or a NOSPACE
alarm) is defragmented, one member at a time (:func:`upkeep`).

Masters come and go with the cluster file: a new master's etcd joins the running cluster
(``etcdctl member add``, then it starts as ``existing``); a master taken out of the file is
removed from etcd by the first master (``etcdctl member remove``) once HAProxy no longer sends
it requests (deploy.py calls :func:`departed_members_removed` after the control-plane stage).
"""

from __future__ import annotations

from pyinfra import logger

from kthw import components
from kthw.artifacts import CATALOGUE
from kthw.commands import (
    ETCD_HEALTHY,
    ETCDCTL,
    etcd_join,
    etcd_lead_moved,
    etcd_members_healthy,
    only_if_peers_healthy,
    wait_until,
)
from kthw.context import HostContext, Wants
from kthw.ops import (
    Directory,
    command_when,
    directories_present,
    placed,
    service_restarted_in_turn,
    service_running,
)
from kthw.paths import ETCD_CA, ETCD_DATA, ETCD_DIR, unit_file
from kthw.pki import etcd_member_cert_name

COMPONENT = components.ETCD


def wants(ctx: HostContext) -> Wants:
    w = Wants(services=list(COMPONENT.units), queries={"etcd_data": {"member_dir": f"{ETCD_DATA}/member"},
                                                       "etcd_status": {"etcdctl": ETCDCTL}})
    if ctx.is_first_master:
        w.queries["etcd_members"] = {"etcdctl": ETCDCTL}
    w.dirs = [Directory(ETCD_DIR, 0o700), Directory(ETCD_DATA, 0o700)]
    w.files["binaries"] = ctx.binaries({"etcd"})
    w.files["certificates"] = [
        ctx.pki_file("etcd-ca.crt", ETCD_CA),  # etcd's own CA, not the cluster's
        ctx.pki_file(f"{etcd_member_cert_name(ctx.node.name)}.crt", f"{ETCD_DIR}/etcd-server.crt"),
        ctx.pki_file(f"{etcd_member_cert_name(ctx.node.name)}.key", f"{ETCD_DIR}/etcd-server.key"),
    ]
    w.files["unit"] = [ctx.template_file(unit_file("etcd"))]
    return w


def deploy(ctx: HostContext, w: Wants) -> None:
    snap = ctx.snapshot
    dirs = directories_present(w.dirs, snap, name="etcd | directories")
    binaries = placed(w.files["binaries"], snap, name="etcd | binaries")
    certs = placed(w.files["certificates"], snap, name="etcd | certificates")
    unit = placed(w.files["unit"], snap, name="etcd | systemd unit")
    # A master without etcd data joins the running cluster, if there is one (else all start new).
    others = [f"https://{m.ip}:2379" for m in ctx.cluster.etcd_members if m != ctx.node]
    command_when(etcd_join(ctx.node.name, f"https://{ctx.node.ip}:2380", others),
                 always=bool(others) and not snap.query("etcd_data"),
                 name="etcd | joins the running cluster if there is one (member add)")
    # A new cluster's members start together (a member waits for quorum before it is ready)...
    started = service_running("etcd", snap, reload_on=[unit], name="etcd | running")
    # ...a running one restarts member by member, each healthy again before the next goes.
    restarted = service_restarted_in_turn(
        "etcd", snap, restart_on=[binaries, certs, unit], ready=ETCD_HEALTHY,
        guard=only_if_peers_healthy(ETCD_HEALTHY, etcd_members_healthy(
            [f"https://{m.ip}:2379" for m in ctx.cluster.etcd_members if m != ctx.node]), "etcd"),
        name="etcd | restarted on change, one member at a time", _serial=True,
    )
    command_when(
        wait_until(ETCD_HEALTHY, "etcd", on_failure=f"{ETCDCTL} endpoint health"),
        when=[started, restarted, dirs], name="etcd | healthy (after any restart)",
    )


MIB = 1 << 20


def upkeep_due(ctx: HostContext) -> tuple[bool, str]:
    """Whether this member is defragmented now, and what its database looks like: due once
    ``etcd.defrag_free_mib`` of the file is free pages, or with a NOSPACE alarm (the database hit
    its quota: defragmenting is etcd's documented way out, then the alarm is disarmed). Never
    with a CORRUPT alarm: that member's data is not to be trusted, and it is reported instead."""
    status = ctx.snapshot.query("etcd_status")
    if not status:  # a new member, or one that does not answer (a restart below deals with it)
        return False, ""
    free = status["db_size"] - status["in_use"]
    said = f"{status['db_size'] / MIB:.0f} MiB, {free / MIB:.0f} MiB of it free"
    if "CORRUPT" in status["alarms"]:
        logger.warning(f"{ctx.node.name}: etcd raised a CORRUPT alarm: its data differs from the other members'. "
                       "Not defragmenting it. Fix: replace the member (docs/day-two.md: etcd upkeep).")
        return False, said
    if "NOSPACE" in status["alarms"]:
        logger.warning(f"{ctx.node.name}: etcd raised a NOSPACE alarm ({said}): the cluster takes no writes "
                       "until it is defragmented and disarmed, which this run does.")
        return True, said + ", NOSPACE alarm"
    return free >= ctx.cluster.etcd.defrag_free_mib * MIB, said


def upkeep(ctx: HostContext) -> None:
    """etcd's upkeep, in the deploy (a converged run pays nothing: the member's status comes with
    the host snapshot): a member with enough free pages is defragmented, one member at a time,
    only while every other member is healthy (a defragmenting member stops answering until it
    is done), then its NOSPACE alarm, if any, is disarmed."""
    due, said = upkeep_due(ctx)
    others = [f"https://{m.ip}:2379" for m in ctx.cluster.etcd_members if m != ctx.node]
    guard = only_if_peers_healthy(ETCD_HEALTHY, etcd_members_healthy(others), "etcd", doing="defragmenting")
    disarm = f" && {ETCDCTL} alarm disarm >/dev/null" if "NOSPACE" in said else ""
    if due:
        logger.info(f"{ctx.node.name}: etcd's database is {said}: defragmenting it, in its turn")
    command_when(f"{guard}; {ETCDCTL} --command-timeout=5m defrag >/dev/null{disarm} && "
                 f"({wait_until(ETCD_HEALTHY, 'etcd')})", always=due, _serial=True,
                 name="etcd | defragmented once etcd.defrag_free_mib of its file is free, one member at a time")


def departed_members_removed(ctx: HostContext) -> None:
    """On the first master: etcd members whose node left the cluster file (or lost ``etcd: true``)
    are removed, one
    ``etcdctl member remove`` each (the removed member's etcd then stops by itself). A departing
    member that leads hands the lead to this master first: removing the leader itself would
    cost an election, and the writes in flight fail with "request timed out"."""
    members = ctx.snapshot.query("etcd_members") or ()
    peers = {f"https://{m.ip}:2380" for m in ctx.cluster.etcd_members}
    me = next((mid for mid, _, urls, _ in members if f"https://{ctx.node.ip}:2380" in urls), "")
    gone = [(mid, name, clients) for mid, name, urls, clients in members if not peers.intersection(urls)]
    steps = []
    for mid, _, clients in gone:
        if me and clients:
            steps.append(f"{{ {etcd_lead_moved(clients[0], me)}; }}")
        steps.append(f"{ETCDCTL} member remove {mid} >/dev/null")
    command_when(" && ".join(steps) or "true", always=bool(gone),
                 name="etcd | members no longer in the cluster file removed"
                 + (f" ({', '.join(n or mid for mid, n, _ in gone)})" if gone else ""))


def retired_wants(ctx: HostContext) -> Wants:
    """What a load balancer that no longer has ``etcd: true`` asks: whether etcd is left there."""
    return Wants(queries={"units_left": list(COMPONENT.units)})


def retired(ctx: HostContext) -> None:
    """On a load balancer whose etcd-only member left the cluster file: its etcd stopped and
    disabled, and its unit, certificates, data and binaries removed, as reset would. deploy.py
    calls it last, once the first master removed the member: stopped any earlier, it would
    leave the masters' rolling etcd restarts without quorum."""
    left = "etcd" in (ctx.snapshot.query("units_left") or ())
    gone = [*COMPONENT.folders, *COMPONENT.data, *COMPONENT.unit_files(),
            *(dest for a in CATALOGUE if a.name in COMPONENT.artifacts for _, dest in a.installs)]
    command_when(f"systemctl disable --now etcd && rm -rf {' '.join(gone)} && systemctl daemon-reload",
                 always=left, name="etcd | the load balancer's former member stopped and removed")
