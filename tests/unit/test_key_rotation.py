"""Encryption-key rotation (kthw/key_rotation.py): the local steps, their refusals, the count of
etcd's values by key (the real script, on etcdctl's JSON), the configs a host may hold."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys

import pytest
import yaml

from kthw import key_rotation as kr
from kthw.__main__ import parse_args
from kthw.cluster_secrets import encryption_config, known_configs, new_key, read_encryption_keys
from kthw.model import DEFAULT_CLUSTER_FILE
from kthw.pki import PkiError, ensure_pki
from tests.conftest import make_cluster


@pytest.fixture
def cluster(tmp_path):
    c = make_cluster(yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()), tmp_path)
    ensure_pki(c)
    return c


def config_path(c):
    return c.pki_dir / "encryption-config.yaml"


def digest(c) -> str:
    return hashlib.sha256(config_path(c).read_bytes()).hexdigest()


def view(c, sealed=None, **lagging) -> kr.Reader:
    """Every master holds the local config and restarted since, except ``lagging`` (name=why)."""
    masters = {}
    for m in c.masters:
        why = lagging.get(m.name.replace("-", "_"))
        masters[m.name] = kr.MasterConfig("0" * 64 if why == "old" else digest(c), 100, 50 if why == "running" else 200)
    return lambda: kr.ClusterView(masters, sealed or {})


def names(c) -> list[str]:
    return [n for n, _ in kr.local_keys(c)]


def test_three_steps_move_a_new_key_from_reading_to_writing_to_alone(cluster):
    first = kr.local_keys(cluster)
    assert names(cluster) == ["key1"] and kr.step_of(first) == "none"
    assert kr.begin(cluster) == "key2"
    assert names(cluster) == ["key1", "key2"] and kr.step_of(kr.local_keys(cluster)) == "begin"
    assert kr.local_keys(cluster)[0] == first[0]  # the old key still seals every write
    assert kr.switch(cluster, view(cluster)) == "key2"
    assert names(cluster) == ["key2", "key1"] and kr.step_of(kr.local_keys(cluster)) == "switch"
    assert kr.finish(cluster, view(cluster, {"key2": 12})) == ["key1"]
    assert names(cluster) == ["key2"] and kr.step_of(kr.local_keys(cluster)) == "none"
    assert config_path(cluster).stat().st_mode & 0o777 == 0o600
    # the old config is kept aside (0600 in a 0700 folder): a host still holding any state of
    # the rotation is this cluster's
    retired = list(cluster.pki_dir.glob("retired-*/encryption-config.yaml"))
    assert len(retired) == 1 and retired[0].stat().st_mode & 0o777 == 0o600
    assert retired[0].parent.stat().st_mode & 0o777 == 0o700
    key1, key2 = first[0], kr.local_keys(cluster)[0]
    for state in ([key1], [key1, key2], [key2, key1], [key2]):
        assert hashlib.sha256(encryption_config(state).encode()).hexdigest() in known_configs(cluster.pki_dir)
    assert hashlib.sha256(encryption_config([new_key("key1")]).encode()).hexdigest() not in known_configs(
        cluster.pki_dir)
    # a second rotation names its key key3
    assert kr.begin(cluster) == "key3"


def test_each_step_is_refused_out_of_turn_and_changes_nothing(cluster):
    before = config_path(cluster).read_bytes()
    with pytest.raises(PkiError, match="needs the rotation at step 'begin', it is at 'none'.*rotate-key begin"):
        kr.switch(cluster, view(cluster))
    with pytest.raises(PkiError, match="needs the rotation at step 'switch'"):
        kr.finish(cluster, view(cluster))
    assert config_path(cluster).read_bytes() == before
    kr.begin(cluster)
    with pytest.raises(PkiError, match="needs the rotation at step 'none', it is at 'begin'"):
        kr.begin(cluster)


def test_switch_waits_for_every_master_to_read_the_new_key(cluster):
    kr.begin(cluster)
    step1 = config_path(cluster).read_bytes()
    with pytest.raises(PkiError) as err:
        kr.switch(cluster, view(cluster, master_2="old"))
    assert "master-2: /var/lib/kubernetes/encryption-config.yaml is not the current config" in str(err.value)
    assert "master-1" not in str(err.value) and "Nothing was changed" in str(err.value)
    with pytest.raises(PkiError, match="master-1: kube-apiserver has not restarted since"):
        kr.switch(cluster, view(cluster, master_1="running"))
    assert config_path(cluster).read_bytes() == step1


def test_finish_waits_until_etcd_holds_nothing_sealed_with_an_old_key(cluster):
    kr.begin(cluster)
    kr.switch(cluster, view(cluster))
    step2 = config_path(cluster).read_bytes()
    for sealed, said in (({"key2": 10, "key1": 2}, "etcd: 2 value(s) under /registry/secrets/ sealed with key1"),
                         ({"key2": 10, "(not encrypted)": 1}, "1 value(s) under /registry/secrets/ sealed with "
                                                              "(not encrypted)")):
        with pytest.raises(PkiError, match="not going on to `finish`") as err:
            kr.finish(cluster, view(cluster, sealed))
        assert said in str(err.value)
    assert config_path(cluster).read_bytes() == step2
    for _, secret in kr.local_keys(cluster):
        assert secret not in str(err.value)


def test_the_status_says_the_step_the_masters_and_etcds_count(cluster):
    text, code = kr.status(cluster, view(cluster, {"key1": 3}))
    assert code == 0 and "keys: key1 writes" in text and "no key rotation under way" in text
    assert "etcd: key1 seals 3" in text
    kr.begin(cluster)
    text, code = kr.status(cluster, view(cluster, {"key1": 3}, master_2="old"))
    assert code == 1 and "key1 writes, key2 reads" in text and "master-2     behind" in text
    kr.switch(cluster, view(cluster))
    text, code = kr.status(cluster, view(cluster, {"key1": 3, "key2": 1}))
    assert code == 1 and "step 2 of 3" in text  # key1's values still wait for the rewrite
    assert kr.status(cluster, view(cluster, {"key2": 4}))[1] == 0

    def unreachable():
        raise PkiError("master-2 not reachable")
    text, code = kr.status(cluster, unreachable)
    assert code == 1 and "the hosts were not read: master-2 not reachable" in text


def test_the_count_reads_etcds_values_by_the_key_that_sealed_them(tmp_path):
    """The script that runs on a master, run here on etcdctl's JSON output (values base64)."""
    values = [b"k8s:enc:secretbox:v1:key2:\x00\x01:ciphertext", b"k8s:enc:secretbox:v1:key2:x",
              b"k8s:enc:secretbox:v1:key1:" + bytes(range(256)), b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret"]
    out = tmp_path / "get.json"
    out.write_text(json.dumps({"kvs": [{"key": "eA==", "value": base64.b64encode(v).decode()} for v in values]}))
    arg = {"etcdctl": f"cat {out} #", "prefixes": ["/registry/secrets/"]}
    run = subprocess.run([sys.executable, "-c", kr.SEALED_WITH_SCRIPT, json.dumps(arg)], capture_output=True, text=True)
    assert run.returncode == 0 and json.loads(run.stdout) == {"key2": 2, "key1": 1, "(not encrypted)": 1}
    assert kr.stale(json.loads(run.stdout), "key2") == {"(not encrypted)": 1, "key1": 1}
    only = subprocess.run([sys.executable, "-c", kr.SEALED_WITH_SCRIPT, json.dumps({**arg, "only": "key2"})],
                          capture_output=True, text=True)
    assert only.returncode == 3
    failed = subprocess.run([sys.executable, "-c", kr.SEALED_WITH_SCRIPT, json.dumps({**arg, "etcdctl": "false #"})],
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "etcdctl get failed" in failed.stderr
    # the command the deploy and the status send carry the script and etcd's TLS flags
    assert "--cacert=/etc/etcd/etcd-ca.crt" in kr.sealed_with_command(only="key2")
    assert '"only": "key2"' in kr.sealed_with_command(only="key2")


def test_a_master_is_read_with_one_command():
    assert kr.parse_master("ab12 1700000000\n1700000100\n") == kr.MasterConfig("ab12", 1700000000, 1700000100)
    assert kr.parse_master("- 0\n0\n") == kr.MasterConfig(None, 0, 0)
    assert "/var/lib/kubernetes/encryption-config.yaml" in kr.READ_COMMAND


def test_an_unreadable_local_config_is_named(cluster):
    config_path(cluster).write_text("kind: nothing\n")
    with pytest.raises(PkiError, match="encryption-config.yaml is missing or holds no usable key"):
        kr.begin(cluster)
    assert read_encryption_keys(config_path(cluster)) is None


@pytest.mark.parametrize("argv, said", [
    (["secrets"], "secrets needs an action"),
    (["pki", "rotate-key"], "pki takes no action 'rotate-key'"),
    (["secrets", "rotate-ca"], "secrets takes no action 'rotate-ca'"),
    (["certs", "begin"], "invalid choice"),
])
def test_the_command_line_names_what_goes_with_what(argv, said, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert said in capsys.readouterr().err


def test_the_command_line_takes_the_steps():
    args = parse_args(["secrets", "rotate-key", "switch"])
    assert (args.command, args.action, args.step) == ("secrets", "rotate-key", "switch")
    assert parse_args(["secrets", "rotate-key"]).step is None
