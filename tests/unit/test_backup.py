"""etcd backups on the operator machine (kthw/backup.py): recorded whole, refused when not."""

from __future__ import annotations

import json
import stat

import pytest
import yaml

from kthw.artifacts import sha256_file
from kthw.backup import (
    Backup,
    BackupError,
    check_backup,
    handover_command,
    new_backup,
    record,
    restore_command,
    snapshot_command,
    source_master,
)
from kthw.model import DEFAULT_CLUSTER_FILE
from kthw.pki import ensure_pki
from tests.conftest import make_cluster

STATUS = '{"hash":1,"revision":1234,"totalKey":567,"totalSize":2097152}'


@pytest.fixture
def cluster(tmp_path):
    c = make_cluster(yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()), tmp_path)
    ensure_pki(c)
    return c


def fetched(cluster, data: bytes = b"etcd snapshot bytes") -> Backup:
    """The snapshot and the master's encryption config, as files.get leaves them."""
    backup = new_backup(cluster)
    backup.db.write_bytes(data)
    backup.encryption_config.write_bytes((cluster.pki_dir / "encryption-config.yaml").read_bytes())
    return backup


def output(backup: Backup, db_sha: str | None = None, enc_sha: str | None = None) -> str:
    """What snapshot_command prints on the master: etcd's status, then both sha256 lines."""
    return (f"{STATUS}\n{db_sha or sha256_file(backup.db)}  /var/lib/kthw/backup/snapshot.db\n"
            f"{enc_sha or sha256_file(backup.encryption_config)}  /var/lib/kthw/backup/encryption-config.yaml\n")


def test_a_backup_is_recorded_with_its_sha256_metadata_and_encryption_config(cluster):
    backup = fetched(cluster)
    sha = sha256_file(backup.db)
    record(cluster, backup, "master-1", output(backup))
    folder = backup.db.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in (backup.db, backup.sha_file, backup.meta_file, backup.encryption_config):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert backup.sha_file.read_text() == f"{sha}  {backup.db.name}\n"  # sha256sum -c reads it
    meta = json.loads(backup.meta_file.read_text())
    assert meta["taken_on"] == "master-1" and meta["etcd_status"]["revision"] == 1234
    assert backup.encryption_config.read_bytes() == (cluster.pki_dir / "encryption-config.yaml").read_bytes()
    assert check_backup(cluster, str(backup.db)) == Backup(backup.db.resolve())


def test_a_download_that_does_not_match_the_masters_sha256_is_deleted(cluster):
    backup = fetched(cluster)
    with pytest.raises(BackupError, match="run the backup again"):
        record(cluster, backup, "master-1", output(backup, db_sha="0" * 64))
    assert not backup.db.exists() and not backup.encryption_config.exists()
    backup = fetched(cluster)
    with pytest.raises(BackupError, match="encryption-config.yaml has sha256"):
        record(cluster, backup, "master-1", output(backup, enc_sha="0" * 64))
    assert not backup.db.exists() and not backup.encryption_config.exists()


def test_the_backup_keeps_the_masters_encryption_config_not_the_local_one(cluster):
    # before: the operator's local config was recorded, whatever the masters used (#19, finding 2)
    backup = new_backup(cluster)
    backup.db.write_bytes(b"etcd snapshot bytes")
    on_master = b"kind: EncryptionConfiguration\n# the master's own\n"
    backup.encryption_config.write_bytes(on_master)
    record(cluster, backup, "master-1", output(backup))
    assert backup.encryption_config.read_bytes() == on_master
    assert stat.S_IMODE(backup.encryption_config.stat().st_mode) == 0o600


def test_the_snapshot_command_copies_the_masters_encryption_config():
    cmd = snapshot_command("etcdctl")
    assert cmd.endswith("cp /var/lib/kubernetes/encryption-config.yaml /var/lib/kthw/backup/encryption-config.yaml"
                        " && sha256sum /var/lib/kthw/backup/encryption-config.yaml")
    assert handover_command("vagrant").startswith("install -m 600 -o vagrant /var/lib/kthw/backup/snapshot.db "
                                                  "~vagrant/.kthw-upload/etcd-snapshot.db")


def test_a_restore_refuses_what_it_cannot_restore_whole(cluster, tmp_path):
    with pytest.raises(BackupError, match="needs the snapshot named"):
        check_backup(cluster, None)
    backup = fetched(cluster)
    with pytest.raises(BackupError, match=r"\.sha256 is missing"):
        check_backup(cluster, str(backup.db))
    record(cluster, backup, "master-1", output(backup))
    backup.db.write_bytes(b"etcd snapshot bytez")
    with pytest.raises(BackupError, match="does not match its recorded sha256"):
        check_backup(cluster, str(backup.db))
    backup.db.write_bytes(b"etcd snapshot bytes")
    meta = json.loads(backup.meta_file.read_text())
    backup.meta_file.write_text(json.dumps({**meta, "cluster": "another"}))
    with pytest.raises(BackupError, match="is a backup of cluster 'another'"):
        check_backup(cluster, str(backup.db))
    backup.meta_file.write_text(json.dumps(meta))
    # the cluster's encryption config lost the key the snapshot's Secrets are sealed with
    (cluster.pki_dir / "encryption-config.yaml").unlink()
    ensure_pki(cluster)
    with pytest.raises(BackupError, match="could not be read") as err:
        check_backup(cluster, str(backup.db))
    old_key = yaml.safe_load(backup.encryption_config.read_text())["resources"][0]["providers"][0]["secretbox"]
    assert old_key["keys"][0]["secret"] not in str(err.value)  # names files, never a key


def test_the_source_master_and_the_restore_command(cluster):
    assert source_master(cluster, None).name == "master-1"
    assert source_master(cluster, "master-2").name == "master-2"
    with pytest.raises(BackupError, match="'worker-1' is not a master"):
        source_master(cluster, "worker-1")
    cmd = restore_command(cluster, cluster.node("master-2"), "20261127T140000Z")
    assert "mv /var/lib/etcd /var/lib/etcd.before-restore-20261127T140000Z" in cmd
    assert "--name master-2" in cmd and f"--initial-cluster {cluster.etcd_initial_cluster}" in cmd
    assert f"--initial-cluster-token {cluster.name}" in cmd and "--mark-compacted" in cmd
    # every placeholder filled (a lab run caught `chmod 700 {ETCD_DATA}` sent as it stood)
    assert "{" not in cmd and cmd.endswith("--mark-compacted >/dev/null && chmod 700 /var/lib/etcd")
    for command in (snapshot_command("etcdctl"), handover_command("vagrant")):
        assert "{" not in command
