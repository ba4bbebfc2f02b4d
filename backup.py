"""Back up etcd to the operator machine:  pyinfra inventory.py backup.py [--data backup_from=master-2]
                     [--data scheduled=newest|etcd-<time>.db]

One snapshot, taken on one master (the first, or ``backup_from``) with etcdctl over TLS, checked
by ``etcdutl snapshot status``, fetched into ``.kthw/<cluster>/backups/etcd-<UTC time>.db`` (0600)
with its sha256, metadata and the master's own encryption config, the one its Secrets need
(kthw/backup.py). Nothing else changes on any host; the files leave the master once they are home.
Before any host is touched (kthw/preflight.py): the source master is in this run and holds this
cluster's identity.

    1. source master   snapshot and encryption config copied as root (0700 folder), sha256s read
    2. source master   copies handed to the SSH user (their 0700 upload folder), root's removed
    3. operator        both downloaded, checked against the master's sha256s, recorded
    4. source master   the SSH user's copies removed

With ``--data scheduled=newest`` (or a snapshot's name) no snapshot is taken: the newest (or
named) of the source master's scheduled snapshots (operations/snapshots.py) is fetched instead,
reading only, checked against the sha256 the master recorded beside it and written as the same
four files (kthw/snapshots.py); nothing changes on the master.
"""

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import files, python, server

from kthw.backup import (
    FETCH_ENCRYPTION,
    FETCH_NAME,
    BackupError,
    handover_command,
    new_backup,
    record,
    snapshot_command,
    source_master,
)
from kthw.commands import ETCDCTL
from kthw.paths import UPLOAD_DIR
from kthw.preflight import Playbook, load, playbook, require_in_run
from kthw.snapshots import fetch, runner, scheduled_name

try:
    source = source_master(load(host), host.data.get("backup_from"))
    scheduled = host.data.get("scheduled")
    wanted = scheduled_name(str(scheduled)) if scheduled is not None else None
except BackupError as exc:
    raise PyinfraError(str(exc)) from None
# The identity is asked of the source master only: no other host is touched.
cluster, node = playbook(host, Playbook("backup.py"), identity=host.data.kthw_node == source.name)
require_in_run(cluster, [source.name], f"backup.py takes its snapshot on {source.name}",
               f"add {source.name} to the run, or name a master that is in it: --data backup_from=NAME.")


def fetch_scheduled() -> None:
    backup = fetch(cluster, source, wanted, runner(host))
    print(f"[{host.name}] fetched {backup.db} and what belongs to it (sha256 checked)")


if node.name == source.name and scheduled is not None:
    python.call(name=f"backup | {wanted or 'the newest'} scheduled snapshot of {source.name} fetched, sha256 checked",
                function=fetch_scheduled)
elif node.name == source.name:
    backup = new_backup(cluster)
    user = host.data.get("ssh_user") or "root"
    taken = server.shell(name=f"backup | etcd snapshot taken on {source.name}", commands=[snapshot_command(ETCDCTL)])
    server.shell(name="backup | upload folder of the SSH user (0700)", _sudo=False,
                 commands=[f"mkdir -p -m 700 {UPLOAD_DIR} && test -O {UPLOAD_DIR} -a ! -L {UPLOAD_DIR} && "
                           f"chmod 700 {UPLOAD_DIR}"])
    server.shell(name="backup | snapshot and encryption config handed to the SSH user for the download",
                 commands=[handover_command(user)])
    files.get(name=f"backup | snapshot fetched to {backup.db}", src=f"{UPLOAD_DIR}/{FETCH_NAME}", dest=str(backup.db),
              _sudo=False)
    files.get(name=f"backup | the master's encryption config fetched to {backup.encryption_config}",
              src=f"{UPLOAD_DIR}/{FETCH_ENCRYPTION}", dest=str(backup.encryption_config), _sudo=False)
    python.call(name="backup | sha256s checked, metadata recorded beside them",
                function=lambda: record(cluster, backup, source.name, taken.stdout))
    server.shell(name="backup | SSH user's copies removed", _sudo=False,
                 commands=[f"rm -f {UPLOAD_DIR}/{FETCH_NAME} {UPLOAD_DIR}/{FETCH_ENCRYPTION}"])
