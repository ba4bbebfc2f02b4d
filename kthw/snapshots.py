"""The masters' scheduled etcd snapshots, seen from the operator machine: which one is meant,
and fetching it into ``.kthw/<cluster>/backups/`` as a backup like backup.py's own.

A master's timer (operations/snapshots.py) writes each snapshot into /var/lib/etcd-snapshots
with the same four files as a backup (kthw/backup.py), an ``etcd-<UTC time>.db`` landing last.
Fetching one reads the four files with one command as root, read-only (a tar, base64 on stdout,
through pyinfra's own connection to the master: no copy in /tmp or anywhere else on the host),
checks the snapshot against the sha256 the master recorded beside it, and writes them locally
(0600, the snapshot last). Then the usual checks apply to it (kthw.backup.check_backup).

    backup.py  --data scheduled=newest|etcd-<time>.db [--data backup_from=master-2]
    restore.py --data snapshot=master-1:etcd-<time>.db

Which names in that folder are whole snapshots, and when each was taken, is decided here
(:func:`whole`, :func:`taken`): ``python -m kthw health`` judges the masters' listings by them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import io
import json
import re
import shlex
import tarfile
from collections.abc import Callable, Iterable

from kthw.backup import STAMP, Backup, BackupError, backups_dir
from kthw.model import Cluster, Node
from kthw.paths import ETCD_SNAPSHOTS
from kthw.pki import ENCRYPTION_CONFIG
from kthw.pkifiles import write_private

NAME = re.compile(r"^etcd-\d{8}T\d{6}Z\.db$")
NAME_SHELL = "^etcd-[0-9]{8}T[0-9]{6}Z[.]db$"  # the same, as grep -E reads it on a master
NEWEST = "newest"
# On a master, as root: runs a command, returns its stdout lines; raises BackupError when it fails.
Run = Callable[[str], list[str]]


def sidecars(name: str) -> list[str]:
    """The files that belong to snapshot ``name``, the snapshot first (kthw.backup.Backup's names).

    >>> sidecars("etcd-20261207T060000Z.db")  # doctest: +NORMALIZE_WHITESPACE
    ['etcd-20261207T060000Z.db', 'etcd-20261207T060000Z.db.sha256', 'etcd-20261207T060000Z.json',
     'etcd-20261207T060000Z.encryption-config.yaml']
    """
    stem = name.removesuffix(".db")
    return [name, f"{name}.sha256", f"{stem}.json", f"{stem}.{ENCRYPTION_CONFIG}"]


def taken(name: str) -> dt.datetime | None:
    """When snapshot ``name`` (or a backup of backup.py, named alike) was taken: the UTC time in
    its name. None for a name that is not a snapshot's.

    >>> taken("etcd-20261207T060000Z.db")
    datetime.datetime(2026, 12, 7, 6, 0, tzinfo=datetime.timezone.utc)
    >>> taken("etcd-notatime.db"), taken("etcd-20261307T060000Z.db"), taken("etcd-20261207T060000Z.json")
    (None, None, None)
    """
    if not NAME.match(name):
        return None
    try:
        return dt.datetime.strptime(name.removeprefix("etcd-").removesuffix(".db"), STAMP).replace(tzinfo=dt.UTC)
    except ValueError:  # the digits are there, the date is not one (a 13th month)
        return None


def whole(names: Iterable[str]) -> list[str]:
    """Of the names in a snapshot folder, the snapshots there whole, oldest first: an
    ``etcd-<time>.db`` with its ``.sha256`` beside it. The script moves the ``.db`` in last and
    prunes it first, so a ``.db`` alone is no snapshot of its making (nor one backup.py or
    restore.py would take).

    >>> whole(["etcd-20261207T060000Z.db.sha256", "etcd-20261207T060000Z.db", ".lock",
    ...        "etcd-20261207T000000Z.db", "etcd-20261207T000000Z.json", ".partial-20261207T120000Z"])
    ['etcd-20261207T060000Z.db']
    """
    present = set(names)
    return sorted(n for n in present if NAME.match(n) and sidecars(n)[1] in present)


def parse_master_ref(cluster: Cluster, value: str) -> tuple[Node, str] | None:
    """``master-1:etcd-<time>.db`` -> (that master, the snapshot's name); None for anything else
    (a local path). A name that looks like such a reference but is wrong is refused."""
    node, sep, name = value.partition(":")
    if not sep or "/" in node or not re.fullmatch(r"[a-z0-9-]+", node):
        return None
    masters = [m.name for m in cluster.masters]
    if node not in masters:
        raise BackupError(f"snapshot={value!r}: {node!r} is not a master of {cluster.source} (masters: "
                          f"{', '.join(masters)}). Fix: name a master and one of its snapshots, like "
                          f"{masters[0]}:etcd-<time>.db (list them: docs/day-two.md, Scheduled snapshots).")
    if not NAME.match(name):
        raise BackupError(f"snapshot={value!r}: {name!r} is not the name of a scheduled snapshot "
                          "(etcd-<UTC time>.db, like etcd-20261207T060000Z.db). Fix: name one as the master "
                          "lists it (docs/day-two.md, Scheduled snapshots).")
    return cluster.node(node), name


def scheduled_name(value: str | None) -> str | None:
    """backup.py's ``scheduled=``: ``newest`` (None) or a snapshot's name."""
    if value in (None, "", NEWEST):
        return None
    if not NAME.match(value):
        raise BackupError(f"scheduled={value!r} is neither `newest` nor the name of a scheduled snapshot "
                          "(etcd-<UTC time>.db). Fix: --data scheduled=newest, or a name as the master lists it.")
    return value


def fetch_command(name: str | None) -> str:
    """As root on a master, reading only: the named (or newest) snapshot's name, then its four
    files as a base64 tar. Fails, saying so, when it or a file of it is not there."""
    pick = shlex.quote(name) if name else f"$(ls | grep -E '{NAME_SHELL}' | sort | tail -n 1)"
    files = '"$n" "$n.sha256" "${n%.db}.json" "${n%.db}.' + ENCRYPTION_CONFIG + '"'
    missing = f'{{ echo "{ETCD_SNAPSHOTS}/$f is missing" >&2; exit 3; }}'
    return (f"cd {ETCD_SNAPSHOTS} && n={pick} && "
            f"if [ -z \"$n\" ]; then echo 'no scheduled snapshot in {ETCD_SNAPSHOTS}' >&2; exit 3; fi && "
            f"for f in {files}; do [ -f \"$f\" ] || {missing}; done && "
            f"echo \"$n\" && tar -cf - {files} | base64")


def runner(host) -> Run:
    """Run a command as root on a pyinfra host, now (also while pyinfra plans), its output never
    printed (it carries the snapshot and the encryption config)."""
    from pyinfra.api import StringCommand

    def run(command: str) -> list[str]:
        ok, output = host.run_shell_command(StringCommand(command), _sudo=bool(host.data.get("_sudo")),
                                            print_output=False, print_input=False)
        if not ok:
            raise BackupError(f"reading the snapshot on {host.name} failed: "
                              f"{output.stderr.strip()[-500:] or 'no message'}. Nothing was touched.")
        return output.stdout_lines

    return run


def fetch(cluster: Cluster, node: Node, name: str | None, run: Run) -> Backup:
    """The named (or newest) scheduled snapshot of ``node`` into the local backups (0600 files in
    a 0700 folder, the snapshot last, under the master's own names), checked against the sha256
    the master recorded. A copy already there is kept if it is the same snapshot."""
    lines = run(fetch_command(name))
    chosen = lines[0].strip() if lines else ""
    if not NAME.match(chosen):
        raise BackupError(f"{node.name} answered {chosen[:80]!r} instead of a snapshot's name. Nothing was written.")
    try:
        data = base64.b64decode("".join(line.strip() for line in lines[1:]), validate=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (binascii.Error, tarfile.TarError) as exc:
        raise BackupError(f"the copy of {chosen} from {node.name} arrived damaged ({exc}). Nothing was written. "
                          "Fix: fetch it again.") from None
    names = sidecars(chosen)
    if sorted(got) != sorted(names):
        raise BackupError(f"the copy of {chosen} from {node.name} holds {sorted(got)}, not {names}. "
                          "Nothing was written.")
    recorded = got[names[1]].decode(errors="replace").split()[0] if got[names[1]].split() else ""
    if (actual := hashlib.sha256(got[chosen]).hexdigest()) != recorded:
        raise BackupError(f"{chosen} from {node.name} has sha256 {actual}, the master recorded {recorded or 'none'}: "
                          "it was damaged on the master or on the way. Nothing was written. Fix: fetch it again, "
                          "or another snapshot.")
    if json.loads(got[names[2]]).get("taken_on") != node.name:
        raise BackupError(f"{chosen} on {node.name} says it was taken elsewhere. Nothing was written.")
    folder = backups_dir(cluster)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    backup = Backup(folder / chosen)
    if backup.db.exists() and hashlib.sha256(backup.db.read_bytes()).hexdigest() != recorded:
        raise BackupError(f"{backup.db} exists and holds another snapshot than {node.name}'s {chosen}. "
                          "Nothing was written. Fix: move it away, then fetch again.")
    for local in [*names[1:], chosen]:  # the snapshot last: a .db here is whole
        write_private(folder / local, got[local])
    return backup


_FETCHED: dict[tuple[str, str], Backup] = {}  # (master, name) -> the local copy: once per run


def fetched_once(cluster: Cluster, node: Node, name: str, run: Run) -> Backup:
    """:func:`fetch`, once per run (restore.py plans on every host; the first one fetches)."""
    key = (node.name, name)
    if key not in _FETCHED:
        _FETCHED[key] = fetch(cluster, node, name, run)
    return _FETCHED[key]
