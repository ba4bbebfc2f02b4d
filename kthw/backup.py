"""etcd backups on the operator machine: what ``backup.py`` writes and ``restore.py`` checks.

A backup is four files in ``.kthw/<cluster>/backups/`` (folder 0700, files 0600)::

    etcd-20261127T140000Z.db                        the snapshot (etcdctl snapshot save)
    etcd-20261127T140000Z.db.sha256                 its sha256, as `sha256sum -c` reads it
    etcd-20261127T140000Z.json                      where and when it was taken, etcd's own status of it
    etcd-20261127T140000Z.encryption-config.yaml    the master's encryption config at that moment

The snapshot's Secrets are sealed with the cluster's encryption key, so a snapshot without that
key restores Secrets nobody can read: the config the master's apiserver uses (not the operator's
local copy, which may differ) is taken with the snapshot and kept beside it. A restore adds the
keys it names that the cluster dropped since (a key rotation finished after the backup) back as
reading keys, and refuses a cluster that holds other keys under the same names.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kthw.artifacts import sha256_file
from kthw.cluster_secrets import EncryptionKey, read_encryption_keys
from kthw.model import Cluster, Node
from kthw.paths import BACKUP_DIR, ETCD_DATA, ETCD_RESTORE_ASIDE, UPLOAD_DIR
from kthw.paths import ENCRYPTION_CONFIG as HOST_ENCRYPTION_CONFIG
from kthw.pki import ENCRYPTION_CONFIG, write_private

# On the master: etcdctl writes the snapshot here (root, 0700), beside a copy of the encryption
# config the master's apiserver uses (the key the snapshot's Secrets are sealed with) ...
REMOTE_DIR = BACKUP_DIR
REMOTE_DB = f"{REMOTE_DIR}/snapshot.db"
REMOTE_ENCRYPTION = f"{REMOTE_DIR}/{ENCRYPTION_CONFIG}"
# ... and hands copies to the SSH user for the download (their 0700 upload folder, never /tmp).
FETCH_NAME = "etcd-snapshot.db"
FETCH_ENCRYPTION = f"etcd-snapshot.{ENCRYPTION_CONFIG}"
# The UTC time in a backup's name (etcd-<STAMP>.db); the masters' snapshot script writes the same
# (date -u +%Y%m%dT%H%M%SZ), and kthw.snapshots.taken reads it back.
STAMP = "%Y%m%dT%H%M%SZ"


class BackupError(Exception):
    """A backup or restore request that cannot be carried out (the message says how to fix it)."""


@dataclass(frozen=True)
class Backup:
    db: Path

    @property
    def name(self) -> str:
        return self.db.name.removesuffix(".db")

    @property
    def sha_file(self) -> Path:
        return self.db.with_name(self.db.name + ".sha256")

    @property
    def meta_file(self) -> Path:
        return self.db.with_name(self.name + ".json")

    @property
    def encryption_config(self) -> Path:
        return self.db.with_name(f"{self.name}.{ENCRYPTION_CONFIG}")


def backups_dir(cluster: Cluster) -> Path:
    return cluster.state_dir / "backups"


@cache
def run_stamp() -> str:
    """One UTC time per run: every host of the run names the same backup (or kept-aside folder)."""
    return dt.datetime.now(dt.UTC).strftime(STAMP)


def new_backup(cluster: Cluster) -> Backup:
    folder = backups_dir(cluster)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return Backup(folder / f"etcd-{run_stamp()}.db")


def source_master(cluster: Cluster, wanted: str | None) -> Node:
    """The master to take the snapshot on: ``--data backup_from=NAME``, else the first."""
    if not wanted:
        return cluster.masters[0]
    names = [m.name for m in cluster.masters]
    if wanted not in names:
        raise BackupError(f"backup_from={wanted!r} is not a master of {cluster.source} (masters: {', '.join(names)}). "
                          "Fix: name one of them, or leave backup_from out to use the first.")
    return cluster.node(wanted)


def snapshot_command(etcdctl: str) -> str:
    """On the master, as root: the snapshot, etcd's status of it (JSON) and its sha256, then the
    master's encryption config beside it and that file's sha256."""
    return (f"umask 077 && mkdir -p {REMOTE_DIR} && {etcdctl} snapshot save {REMOTE_DB} >/dev/null && "
            f"etcdutl snapshot status {REMOTE_DB} -w json && sha256sum {REMOTE_DB} && "
            f"cp {HOST_ENCRYPTION_CONFIG} {REMOTE_ENCRYPTION} && sha256sum {REMOTE_ENCRYPTION}")


def handover_command(user: str) -> str:
    """On the master, as root: both files handed to the SSH user for the download, root's copies removed."""
    folder = f"~{shlex.quote(user)}/{UPLOAD_DIR}"  # user: a validated login name (kthw.model)
    return (f"install -m 600 -o {shlex.quote(user)} {REMOTE_DB} {folder}/{FETCH_NAME} && "
            f"install -m 600 -o {shlex.quote(user)} {REMOTE_ENCRYPTION} {folder}/{FETCH_ENCRYPTION} && "
            f"rm -f {REMOTE_DB} {REMOTE_ENCRYPTION}")


def record(cluster: Cluster, backup: Backup, node: str, output: str) -> None:
    """After the download of the snapshot and of the master's encryption config (beside it, as
    ``backup.encryption_config``): check both against the master's sha256, then write the sha256
    file and the metadata beside them (all 0600). A copy that does not match is deleted."""
    lines = [line for line in output.splitlines() if line.strip()]
    remote_sha, remote_enc_sha = lines[-2].split()[0], lines[-1].split()[0]
    status = json.loads(lines[-3])
    for path, want in ((backup.db, remote_sha), (backup.encryption_config, remote_enc_sha)):
        path.chmod(0o600)
        if (got := sha256_file(path)) != want:
            backup.db.unlink(missing_ok=True)
            backup.encryption_config.unlink(missing_ok=True)
            raise BackupError(f"the downloaded {path.name} has sha256 {got}, {node} computed {want}: deleted. "
                              "Fix: run the backup again.")
    write_private(backup.sha_file, sha_line(remote_sha, backup.db.name).encode())
    meta = metadata(cluster, node, backup.name.removeprefix("etcd-"), remote_sha, status)
    write_private(backup.meta_file, metadata_text(meta).encode())


def sha_line(sha256: str, name: str) -> str:
    """A backup's .sha256 file, as `sha256sum -c` reads it (the masters' snapshot script writes
    the same line: files/usr/local/sbin/kthw-etcd-snapshot.j2)."""
    return f"{sha256}  {name}\n"


def metadata(cluster: Cluster, node: str, time: str, sha256: str, status) -> dict:
    """A backup's .json: which cluster, where and when it was taken, its sha256, the versions, and
    etcd's own status of the snapshot. The masters' snapshot script writes the same, from this
    dict with its run's time, sha256 and status filled in (operations/snapshots.py)."""
    return {"cluster": cluster.name, "taken_on": node, "time": time, "sha256": sha256,
            "etcd": cluster.versions.etcd, "kubernetes": cluster.versions.kubernetes, "etcd_status": status}


def metadata_text(meta: dict) -> str:
    return json.dumps(meta, indent=2) + "\n"


def check_backup(cluster: Cluster, snapshot: str | None) -> Backup:
    """Before a restore touches any host: the snapshot named, whole (sha256), of this cluster,
    and its Secrets readable with the cluster's encryption config."""
    if not snapshot:
        raise BackupError("restore.py needs the snapshot named: --data snapshot=.kthw/<cluster>/backups/etcd-<time>.db "
                          f"(backups of this cluster: {', '.join(p.name for p in available(cluster)) or 'none'})")
    backup = Backup(Path(os.path.expanduser(snapshot)).resolve())
    for path in (backup.db, backup.sha_file, backup.meta_file, backup.encryption_config):
        if not path.is_file():
            raise BackupError(f"{path} is missing: a backup is the snapshot with its .sha256, .json and "
                              "encryption config beside it (backup.py writes all four). Fix: name a whole backup.")
    recorded = backup.sha_file.read_text().split()[0]
    if (actual := sha256_file(backup.db)) != recorded:
        raise BackupError(f"{backup.db} does not match its recorded sha256 (recorded {recorded}, file {actual}): "
                          "it was changed or damaged. Nothing was touched. Fix: restore another backup.")
    meta = json.loads(backup.meta_file.read_text())
    if meta.get("cluster") != cluster.name:
        raise BackupError(f"{backup.db} is a backup of cluster {meta.get('cluster')!r}, not {cluster.name!r}. "
                          "Fix: name a backup of this cluster.")
    keys_after_restore(cluster, backup)
    return backup


def keys_after_restore(cluster: Cluster, backup: Backup) -> list[EncryptionKey]:
    """The encryption keys the cluster needs once the backup is restored: its own, then those
    the snapshot's values are sealed with that it no longer holds (a backup from before a key
    rotation), as reading keys. With any added, the cluster is in step 2 of a rotation: the next
    deploy rewrites every Secret with the current key (kthw/key_rotation.py). A key of the
    backup whose name the cluster holds with another secret cannot be added: refused."""
    local = cluster.pki_dir / ENCRYPTION_CONFIG
    ours, theirs = read_encryption_keys(local), read_encryption_keys(backup.encryption_config)
    if ours is None or theirs is None:
        raise BackupError(f"{local if ours is None else backup.encryption_config} holds no usable encryption key. "
                          "Nothing was touched. Fix: restore that file from another copy.")
    held = dict(ours)
    if clash := [name for name, secret in theirs if held.get(name, secret) != secret]:
        raise BackupError(f"the snapshot's Secrets are sealed with key(s) {', '.join(clash)} of "
                          f"{backup.encryption_config}, and {local} holds other keys under those names: restored, "
                          "they could not be read. Nothing was touched. Fix: restore a backup of this cluster's "
                          "identity, or adopt the identity of the cluster the backup came from.")
    return [*ours, *((name, secret) for name, secret in theirs if name not in held)]


def available(cluster: Cluster) -> list[Path]:
    return sorted(backups_dir(cluster).glob("etcd-*.db"))


def restore_command(cluster: Cluster, node: Node, stamp: str) -> str:
    """On one master, etcd stopped: keep the old data aside, then a new data dir from the
    snapshot for this member, as etcd documents it. The revision jumps ahead and everything
    older is marked compacted, so clients watching from before the restore start over instead
    of seeing time run backwards (Kubernetes' advice for restoring a cluster it uses)."""
    return (f"if [ -e {ETCD_DATA} ]; then mv {ETCD_DATA} {ETCD_RESTORE_ASIDE}{stamp}; fi && "
            f"etcdutl snapshot restore {REMOTE_DB} --name {node.name} "
            f"--initial-cluster {cluster.etcd_initial_cluster} --initial-cluster-token {cluster.name} "
            f"--initial-advertise-peer-urls https://{node.ip}:2380 --data-dir {ETCD_DATA} "
            f"--bump-revision 1000000000 --mark-compacted >/dev/null && chmod 700 {ETCD_DATA}")

