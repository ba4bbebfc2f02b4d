"""Rotating the encryption-at-rest key on a running cluster (docs/pki.md: encryption key rotation):
three steps, a deploy after each, Secrets read and written through the load balancer all along.
Afterwards etcd holds no value sealed with the old key, Secrets from before and from during the
rotation read back, and a backup taken before the rotation still restores."""

from __future__ import annotations

import json
import sys
import time

import pytest

from kthw import key_rotation
from kthw.backup import available
from tests.lab.lab import Lab, RequestLoop, reference_only, sh
from tests.lab.test_backup import pyinfra
from tests.lab.test_cluster import masters


class SecretLoop(RequestLoop):
    """Every round: a Secret written, read back and deleted, through the load balancer."""

    def round(self, i: int) -> None:
        self._one("create", "secret", "generic", f"{self.name}-{i}", "--from-literal=n=1")
        self._one("get", "secret", f"{self.name}-{i}", "-o", "name")
        self._one("delete", "secret", f"{self.name}-{i}", "--wait=false")


def rotate(lab: Lab, *step: str, check: bool = True):
    return sh([sys.executable, "-m", "kthw", "secrets", "rotate-key", *step], env=lab.env, check=check)


def sealed(lab: Lab) -> dict[str, int]:
    """etcd's values under /registry/secrets/, by the key that sealed them (counted on a master)."""
    return json.loads(lab.script(masters(lab)[0], key_rotation.sealed_with_command()))


def keys(lab: Lab) -> list[str]:
    return [name for name, _ in key_rotation.local_keys(lab.cluster)]


def read(lab: Lab, name: str) -> str:
    return lab.kubectl("get", "secret", name, "-o", "jsonpath={.data.k}")


@pytest.mark.day_two
def test_the_encryption_key_rotates_in_three_steps_and_old_backups_still_restore(lab):
    reference_only(lab)
    first = keys(lab)[0]
    lab.kubectl("create", "secret", "generic", "kthw-key-before", "--from-literal=k=before")
    before = set(available(lab.cluster))
    pyinfra(lab, "backup.py", label="etcd backup before the key rotation")
    (backup,) = sorted(set(available(lab.cluster)) - before)
    assert set(sealed(lab)) == {first}

    # going on before the deploy reached the masters is refused, naming them
    rotate(lab, "begin")
    new = keys(lab)[1]
    early = rotate(lab, "switch", check=False)
    assert early.returncode != 0 and "master-1: /var/lib/kubernetes/encryption-config.yaml is not the current" \
        in early.stderr and "Nothing was changed" in early.stderr, early.stderr

    start = time.monotonic()
    with SecretLoop(lab, name="kthw-key-probe") as loop:
        lab.deploy(label="deploy after rotate-key begin")
        rotate(lab, "switch")
        lab.deploy(label="deploy after rotate-key switch (every Secret rewritten)")
        lab.kubectl("create", "secret", "generic", "kthw-key-during", "--from-literal=k=during")
        status = rotate(lab, check=False)
        assert status.returncode == 0 and f"etcd: {new} seals" in status.stdout, status.stdout
        rotate(lab, "finish")
        lab.deploy(label="deploy after rotate-key finish")
    lab.timings["encryption key rotation (3 steps and 3 deploys)"] = time.monotonic() - start
    counted = sealed(lab)
    print(f"\nkey rotation: {loop.requests} Secret requests through the load balancer, {len(loop.failures)} "
          f"failed; etcd's values by key afterwards: {counted}")
    assert loop.failures == [], loop.failures
    assert keys(lab) == [new] and set(counted) == {new}, counted
    assert read(lab, "kthw-key-before") == "YmVmb3Jl" and read(lab, "kthw-key-during") == "ZHVyaW5n"
    assert not [name for name, p in lab.plan().items() if p["hosts_with_change"]]

    # the backup from before the rotation restores: its key comes back as a reading key (step 2),
    # the next deploy rewrites its Secrets with the current key, finish drops the old one again
    lab.kubectl("delete", "secret", "kthw-key-before")
    pyinfra(lab, "restore.py", "--data", f"snapshot={backup}", label="etcd restore of a backup from before")
    assert keys(lab) == [new, first]
    assert read(lab, "kthw-key-before") == "YmVmb3Jl"
    assert sealed(lab).get(first, 0) > 0
    lab.deploy(label="deploy after the restore (the restored Secrets rewritten)")
    assert set(sealed(lab)) == {new}
    rotate(lab, "finish")
    lab.deploy(label="deploy after rotate-key finish, again")
    assert keys(lab) == [new] and read(lab, "kthw-key-before") == "YmVmb3Jl"
    assert not [name for name, p in lab.plan().items() if p["hosts_with_change"]]
    lab.kubectl("delete", "secret", "kthw-key-before")
