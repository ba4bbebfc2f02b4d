"""Scheduled etcd snapshots on every master: folder → script → service and timer units → timer
running.

A systemd timer (``backup.every``, at fixed UTC times, each master at its own offset into the
interval, Persistent) starts a oneshot service that runs ``kthw-etcd-snapshot``: one snapshot of
the master's own member over the local client TLS, made in a work folder and moved into
/var/lib/etcd-snapshots (0700) by rename, in backup.py's format (the snapshot, its .sha256, its
.json and the master's encryption config beside it; kthw/backup.py), then the newest
``backup.keep`` kept. ``backup.py --data scheduled=newest`` fetches one to the operator machine,
``restore.py --data snapshot=<master>:<name>`` restores one (kthw/snapshots.py).

Masters only, not a load balancer's etcd-only member: the encryption config the snapshot's
Secrets need is on the masters. The timer restarts only when its own unit changed; the script
and the service unit are read at each run. With ``backup.scheduled: false`` a deploy stops and
disables the timer and removes the units and the script; the snapshots taken stay (reset.py
removes them with everything else).
"""

from __future__ import annotations

import json

from kthw import components
from kthw.backup import metadata
from kthw.commands import ETCDCTL
from kthw.context import HostContext, Wants
from kthw.ops import Directory, command_when, directories_present, files_synced, placed, service_running
from kthw.paths import ETCD_SNAPSHOT_SCRIPT, ETCD_SNAPSHOTS, unit_file
from kthw.pki import ENCRYPTION_CONFIG
from kthw.snapshots import NAME_SHELL

COMPONENT = components.ETCD_SNAPSHOTS
SERVICE, TIMER = COMPONENT.units


def on_calendar(every: int, position: int, masters: int) -> str:
    """The timer's OnCalendar for a master: every ``every`` seconds (a divisor of an hour or a
    day, kthw.checks), shifted by ``position`` / ``masters`` of the interval.

    >>> on_calendar(6 * 3600, 0, 2), on_calendar(6 * 3600, 1, 2)
    ('*-*-* 00/6:00:00 UTC', '*-*-* 03/6:00:00 UTC')
    >>> on_calendar(60, 1, 2), on_calendar(15 * 60, 2, 3), on_calendar(86400, 1, 2)
    ('*-*-* *:00/1:30 UTC', '*-*-* *:10/15:00 UTC', '*-*-* 12:00:00 UTC')
    """
    offset = every * position // masters
    if every < 3600:
        return f"*-*-* *:{offset // 60:02d}/{every // 60}:{offset % 60:02d} UTC"
    hours, rest = divmod(offset, 3600)
    repeat = f"/{every // 3600}" if every < 86400 else ""  # once a day: no repetition (systemd refuses 00/24)
    return f"*-*-* {hours:02d}{repeat}:{rest // 60:02d}:{rest % 60:02d} UTC"


def randomized_delay(every: int, masters: int) -> int:
    """Seconds of random delay: a tenth of the spacing between two masters' times, so masters
    that catch up together (Persistent, after a shared outage) do not start in the same second,
    and never one master's run into the next one's slot.

    >>> randomized_delay(6 * 3600, 2), randomized_delay(60, 2)
    (1080, 3)
    """
    return every // masters // 10


def span(seconds: int) -> str:
    """A duration as people write it.

    >>> span(10800), span(1800), span(30), span(5400)
    ('3h', '30min', '30s', '90min')
    """
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def wants(ctx: HostContext) -> Wants:
    backup = ctx.cluster.backup
    if not backup.scheduled:
        return Wants(queries={"units_left": [TIMER]})  # see retired()
    masters = ctx.cluster.masters
    w = Wants(services=[TIMER], dirs=[Directory(ETCD_SNAPSHOTS, 0o700)])
    # the .json's fixed part (kthw.backup.metadata); the script fills in its run's time, sha256, status
    meta = json.dumps(metadata(ctx.cluster, ctx.node.name, "", "", None))
    w.files["script"] = [ctx.template_file(ETCD_SNAPSHOT_SCRIPT, mode=0o755, keep=backup.keep, etcdctl=ETCDCTL,
                                           encryption_config=ENCRYPTION_CONFIG, meta=meta, name_pattern=NAME_SHELL)]
    w.files["service unit"] = [ctx.template_file(unit_file(SERVICE))]
    w.files["timer unit"] = [ctx.template_file(
        unit_file(TIMER), every=backup.every, position=masters.index(ctx.node) + 1, masters=len(masters),
        spacing=span(backup.seconds // len(masters)),
        on_calendar=on_calendar(backup.seconds, masters.index(ctx.node), len(masters)),
        randomized_delay=randomized_delay(backup.seconds, len(masters)))]
    return w


def deploy(ctx: HostContext, w: Wants) -> None:
    snap = ctx.snapshot
    if not ctx.cluster.backup.scheduled:
        retired(ctx)
        return
    directories_present(w.dirs, snap, name="etcd snapshots | folder (0700)")
    files_synced(w.files["script"], snap, check="sh -n {path}", name="etcd snapshots | script (checked by sh -n)")
    service = placed(w.files["service unit"], snap, name="etcd snapshots | service unit")
    timer = placed(w.files["timer unit"], snap, name="etcd snapshots | timer unit")
    # The script and the service unit are read at each run: only a new timer unit restarts the timer.
    service_running(TIMER, snap, restart_on=[timer], reload_on=[service, timer], name="etcd snapshots | timer running")


def retired(ctx: HostContext) -> None:
    """With ``backup.scheduled: false``: a timer a former deploy left running (or enabled) is
    stopped and disabled, its units, script and systemd's record of its last run removed. The
    snapshots stay: they are the operator's, not the schedule's."""
    gone = [*COMPONENT.unit_files(), *COMPONENT.files, *COMPONENT.data]
    command_when(f"systemctl disable --now {TIMER} && rm -f {' '.join(gone)} && systemctl daemon-reload",
                 always=TIMER in (ctx.snapshot.query("units_left") or ()),
                 name="etcd snapshots | timer stopped and removed (backup.scheduled: false)")
