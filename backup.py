"""Back up etcd to the operator machine:  pyinfra inventory.py backup.py [--data backup_from=master-2]

One snapshot, taken on one master (the first, or ``backup_from``) with etcdctl over TLS, checked
by ``etcdutl snapshot status``, fetched into ``.kthw/<cluster>/backups/etcd-<UTC time>.db`` (0600)
with its sha256, metadata and the encryption config its Secrets need (kthw/backup.py). Nothing
else changes on any host; the snapshot leaves the master once it is home.

    1. source master   snapshot saved as root (0700 folder), status and sha256 read
    2. source master   a copy handed to the SSH user (their 0700 upload folder), the root copy removed
    3. operator        the copy downloaded, checked against the master's sha256, recorded
    4. source master   the SSH user's copy removed
"""

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import files, python, server

from kthw.backup import FETCH_NAME, REMOTE_DB, BackupError, new_backup, record, snapshot_command, source_master
from kthw.commands import ETCDCTL
from kthw.model import load_cluster
from kthw.ops import UPLOAD_DIR

cluster = load_cluster(host.data.kthw_cluster)
try:
    source = source_master(cluster, host.data.get("backup_from"))
except BackupError as exc:
    raise PyinfraError(str(exc)) from None

if host.data.kthw_node == source.name:
    backup = new_backup(cluster)
    user = host.data.get("ssh_user") or "root"
    taken = server.shell(name=f"backup | etcd snapshot taken on {source.name}", commands=[snapshot_command(ETCDCTL)])
    server.shell(name="backup | upload folder of the SSH user (0700)", _sudo=False,
                 commands=[f"mkdir -p -m 700 {UPLOAD_DIR} && test -O {UPLOAD_DIR} -a ! -L {UPLOAD_DIR} && "
                           f"chmod 700 {UPLOAD_DIR}"])
    server.shell(name="backup | snapshot handed to the SSH user for the download",
                 commands=[f"install -m 600 -o {user} {REMOTE_DB} ~{user}/{UPLOAD_DIR}/{FETCH_NAME} "
                           f"&& rm -f {REMOTE_DB}"])
    files.get(name=f"backup | snapshot fetched to {backup.db}", src=f"{UPLOAD_DIR}/{FETCH_NAME}", dest=str(backup.db),
              _sudo=False)
    python.call(name="backup | sha256 checked, metadata and encryption config recorded beside it",
                function=lambda: record(cluster, backup, source.name, taken.stdout))
    server.shell(name="backup | SSH user's copy removed", _sudo=False, commands=[f"rm -f {UPLOAD_DIR}/{FETCH_NAME}"])
