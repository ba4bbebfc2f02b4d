"""Restore etcd from a backup:  pyinfra inventory.py restore.py --data snapshot=.kthw/<cluster>/backups/etcd-<time>.db
                          or a master's scheduled snapshot:  --data snapshot=master-1:etcd-<time>.db

Every etcd member (the masters', and a load balancer's etcd-only one) starts over from the
snapshot, the way etcd documents it, and the control plane comes back. Before any host is
touched, the backup is checked (kthw/backup.py): whole (sha256), of this cluster, its Secrets
readable with the cluster's encryption config; the hosts hold this cluster's identity
(kthw/preflight.py). It runs on every node at once, so it refuses a run that leaves any machine
out (--limit, --exclude, a stopped machine). A master's scheduled snapshot (operations/snapshots.py)
is first fetched into .kthw/<cluster>/backups/ (read only on the master, checked against the
sha256 recorded beside it; kthw/snapshots.py), then checked and restored like any backup.

    1. members  the snapshot uploaded (0600) to every etcd member: the masters, and the load
                balancer if it holds an etcd-only member
    2. masters  kube-scheduler, kube-controller-manager and kube-apiserver stopped
       members  etcd stopped
    3. members  the old data dir kept aside (/var/lib/etcd.before-restore-<time>), a new one
                restored from the snapshot for each member (etcdutl snapshot restore)
    4. members  etcd started on all at once (a member waits for its peers), healthy
       masters  a backup sealed with keys the cluster dropped since (a finished key rotation):
                the encryption config with them added back as reading keys, here and locally
                (the next deploy rewrites those Secrets with the current key)
    5. masters  kube-apiserver started and ready, then the controller-manager and scheduler
       members  the snapshot removed
    -- barrier --
    6. nodes    kubelet and kube-proxy restarted, so none keeps state from after the snapshot
"""

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import python, server

from kthw.backup import REMOTE_DB, BackupError, check_backup, keys_after_restore, restore_command, run_stamp
from kthw.cluster_secrets import ENCRYPTION_CONFIG, encryption_config, read_encryption_keys, write_encryption_config
from kthw.commands import APISERVER_READY, ETCD_HEALTHY, KUBECTL, wait_until
from kthw.ops import ManagedFile, Snapshot, files_synced
from kthw.paths import ENCRYPTION_CONFIG as HOST_ENCRYPTION_CONFIG
from kthw.paths import ETCD_RESTORE_ASIDE
from kthw.preflight import Playbook, check_identity, host_of, playbook
from kthw.snapshots import fetched_once, parse_master_ref, runner

# Every member starts over from the snapshot together: one left out would never reach quorum.
cluster, node = playbook(host, Playbook("restore.py", whole=True,
                                        why_whole="restores every etcd member and restarts every node at once"),
                         identity=False)
try:  # the backup first: it is local, and a refusal then costs no host a command
    snapshot = host.data.get("snapshot")
    if snapshot and (ref := parse_master_ref(cluster, str(snapshot))):
        # a master's scheduled snapshot: fetched once (reading only), then it is a local backup
        source, name = ref
        snapshot = str(fetched_once(cluster, source, name, runner(host_of(source.name))).db)
    backup = check_backup(cluster, snapshot)
    keys = keys_after_restore(cluster, backup)
except BackupError as exc:
    raise PyinfraError(str(exc)) from None
# A backup from before a finished key rotation needs its old key back, as a reading key.
keys_added = keys != read_encryption_keys(cluster.pki_dir / ENCRYPTION_CONFIG)
check_identity(host, cluster, node)
stamp = run_stamp()

if node.runs_etcd:  # every master, and the load balancer's etcd-only member if there is one
    # Always uploaded (every restore removes it at the end): no need to ask the host first.
    snap = Snapshot({"files": {REMOTE_DB: None}}, {"files": [REMOTE_DB]})
    upload = ManagedFile(REMOTE_DB, backup.sha_file.read_text().split()[0], local=backup.db, mode=0o600,
                         secret=True)
    server.shell(name="restore | backup folder (0700)", commands=[f"mkdir -p -m 700 {REMOTE_DB.rsplit('/', 1)[0]}"])
    files_synced([upload], snap, name=f"restore | {backup.db.name} uploaded to every etcd member")
    if node.is_master:
        server.shell(name="restore | control plane stopped on every master",
                     commands=["systemctl stop kube-scheduler kube-controller-manager kube-apiserver"])
    server.shell(name="restore | etcd stopped on every member", commands=["systemctl stop etcd"])
    server.shell(name=f"restore | etcd data restored from the snapshot (old: {ETCD_RESTORE_ASIDE}{stamp})",
                 commands=[restore_command(cluster, node, stamp)])
    server.shell(name="restore | etcd started on every member and healthy",
                 commands=["systemctl start --no-block etcd", wait_until(ETCD_HEALTHY, "etcd")])
    if node.is_master and keys_added:
        if node == cluster.masters[0]:  # the operator's copy, once, when the run gets this far
            python.call(name="restore | the backup's keys added to the local encryption config (reading keys)",
                        function=write_encryption_config, path=cluster.pki_dir / ENCRYPTION_CONFIG, keys=keys)
        config = ManagedFile.text(HOST_ENCRYPTION_CONFIG, encryption_config(keys), mode=0o600, secret=True)
        files_synced([config], Snapshot({"files": {HOST_ENCRYPTION_CONFIG: None}}, {"files": [HOST_ENCRYPTION_CONFIG]}),
                     name="restore | encryption config with the backup's keys on every master")
    if node.is_master:
        server.shell(name="restore | kube-apiserver started and ready, then the controller-manager and scheduler",
                     commands=["systemctl start kube-apiserver",
                               wait_until(APISERVER_READY, "kube-apiserver",
                                          on_failure=f"{KUBECTL} get --raw '/readyz?verbose'"),
                               "systemctl start kube-controller-manager kube-scheduler"])
    server.shell(name="restore | the uploaded snapshot removed", commands=[f"rm -f {REMOTE_DB}"])

server.shell(name="--- barrier: control plane restored ---", commands=[])

if node.role in ("master", "worker"):
    server.shell(name="restore | kubelet and kube-proxy restarted", commands=["systemctl restart kubelet kube-proxy"])
