"""Rotating the encryption-at-rest key: ``python -m kthw secrets rotate-key <step>``.

Every Secret in etcd is sealed with a named key of the encryption config (the value starts
``k8s:enc:secretbox:v1:<name>:``), and every apiserver must be able to open what any other
one wrote. So a new key cannot simply replace the old one; the rotation takes three steps, each
followed by an ordinary deploy (which restarts the apiservers one at a time):

1. ``begin``   a new key joins the config after the current one: every apiserver can read
               with it, none writes with it yet.
2. ``switch``  the new key moves first and seals every write. The deploy after it rewrites
               every Secret once all apiservers restarted (only while any is sealed with
               another key), then counts the values under ``/registry/secrets/`` in etcd by
               the key that sealed them: none may be left with another key.
3. ``finish``  the old key leaves the config (it stays in the backups taken before, and in
               ``<pki>/retired-<time>/``: a host still holding it is known as this cluster's).

``switch`` and ``finish`` first read every master over SSH and refuse, naming the master, unless
the previous step's deploy reached it (the config placed, the apiserver restarted since);
``finish`` also refuses while etcd holds a value sealed with any key but the new one. Without a
step, the command prints where the rotation stands. The steps are told apart by the local config
alone: keys are named key1, key2, ...; the newest written last is step 1, written first step 2.

A restore of a backup taken before the rotation (restore.py) adds the keys that backup needs
back as reading keys, which is step 2 again: the next deploy rewrites its Secrets with the
current key, and ``finish`` drops the old ones once more.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kthw.castore import RETIRED
from kthw.cluster_secrets import (
    ENCRYPTED_RESOURCES,
    ENCRYPTION_CONFIG,
    EncryptionKey,
    new_key,
    read_encryption_keys,
    retire_encryption_config,
    write_encryption_config,
)
from kthw.commands import ETCDCTL
from kthw.model import Cluster
from kthw.paths import ENCRYPTION_CONFIG as HOST_ENCRYPTION_CONFIG
from kthw.pkifiles import PkiError

SEALED_WITH_SCRIPT = (Path(__file__).parent / "remote" / "sealed_with.py").read_text()
# The sealed_with script's argument: the etcd prefixes of everything the config encrypts.
SEALED_WITH_ARG = {"etcdctl": ETCDCTL, "prefixes": list(ENCRYPTED_RESOURCES.values())}


def sealed_with_command(only: str | None = None) -> str:
    """The count as a command on a master (JSON out); with ``only``, it fails if any value is
    sealed with another key."""
    arg = {**SEALED_WITH_ARG, **({"only": only} if only else {})}
    return f"python3 -c {shlex.quote(SEALED_WITH_SCRIPT)} {shlex.quote(json.dumps(arg))}"


# --------------------------------------------------------------------------- the local state


def _number(name: str) -> int:
    return int(m.group(1)) if (m := re.fullmatch(r"key(\d+)", name)) else 0


def step_of(keys: list[EncryptionKey]) -> str:
    """none (one key), begin (the newest key only reads) or switch (it writes, older ones read)."""
    if len(keys) == 1:
        return "none"
    newest = max(keys, key=lambda k: _number(k[0]))
    return "switch" if keys[0] == newest else "begin"


def local_keys(cluster: Cluster) -> list[EncryptionKey]:
    path = cluster.pki_dir / ENCRYPTION_CONFIG
    if (keys := read_encryption_keys(path)) is None:
        raise PkiError(f"{path} is missing or holds no usable key. Fix: run `python -m kthw pki` on a new "
                       "cluster, or `python -m kthw pki adopt` to copy a running cluster's.")
    return keys


def stale(counts: dict[str, int], writing: str) -> dict[str, int]:
    """The values etcd holds sealed with any key but the writing one (or not encrypted)."""
    return {name: n for name, n in sorted(counts.items()) if name != writing and n}


# --------------------------------------------------------------------------- what the masters hold


@dataclass(frozen=True)
class MasterConfig:
    sha256: str | None  # of the encryption config the apiserver reads, None if absent
    mtime: int
    apiserver_started: int  # 0: not running


# One command per master: the placed config's digest and mtime, the apiserver's start time.
_READ = f"""
f={HOST_ENCRYPTION_CONFIG}
if [ -f "$f" ]; then echo "$(sha256sum < "$f" | cut -d' ' -f1) $(stat -c %Y "$f")"; else echo "- 0"; fi
t=$(systemctl show -p ExecMainStartTimestamp --value kube-apiserver 2>/dev/null)
if [ -n "$t" ]; then date -d "$t" +%s; else echo 0; fi
"""
READ_COMMAND = "sh -c " + shlex.quote(_READ)


def parse_master(text: str) -> MasterConfig:
    first, started = text.split("\n")[:2]
    digest, mtime = first.split()
    return MasterConfig(None if digest == "-" else digest, int(mtime), int(started))


@dataclass(frozen=True)
class ClusterView:
    masters: dict[str, MasterConfig]
    sealed: dict[str, int]  # etcd's values by the key that sealed them


Reader = Callable[[], ClusterView]


def ssh_reader(cluster: Cluster) -> Reader:
    """Read every master (all must answer) and count etcd's values from the first."""
    from kthw.inventory import InventoryError, connections
    from kthw.ssh import SshError, as_root, ssh_run

    def read() -> ClusterView:
        names = [m.name for m in cluster.masters]
        try:
            conns = connections(cluster, limit=names)
        except InventoryError as exc:
            raise PkiError(str(exc)) from None
        if missing := [n for n in names if n not in conns]:
            raise PkiError(f"{', '.join(missing)} not reachable: every master must be read. Fix: start it, "
                           "or remove it from the cluster file first.")
        try:
            with ThreadPoolExecutor(len(names)) as pool:
                texts = pool.map(lambda n: ssh_run(n, conns[n], as_root(conns[n], READ_COMMAND)).decode(), names)
                masters = {n: parse_master(t) for n, t in zip(names, texts, strict=True)}
            first = names[0]
            sealed = json.loads(ssh_run(first, conns[first], as_root(conns[first], sealed_with_command()), timeout=600))
        except SshError as exc:
            raise PkiError(f"reading the masters failed: {exc}") from None
        return ClusterView(masters, sealed)
    return read


def not_reached(want_sha256: str, masters: dict[str, MasterConfig]) -> list[str]:
    """Masters whose apiserver does not run with the local config yet (placed, then restarted)."""
    out = []
    for name, m in sorted(masters.items()):
        if m.sha256 != want_sha256:
            out.append(f"{name}: {HOST_ENCRYPTION_CONFIG} is not the current config")
        elif m.apiserver_started < m.mtime:
            out.append(f"{name}: kube-apiserver has not restarted since {HOST_ENCRYPTION_CONFIG} changed")
    return out


# --------------------------------------------------------------------------- the steps


NEXT_STEP = {
    "none": "no key rotation under way. Start one: python -m kthw secrets rotate-key begin",
    "begin": "step 1 of 3 (the new key reads, the old one writes). After a deploy that completed: "
             "python -m kthw secrets rotate-key switch",
    "switch": "step 2 of 3 (the new key writes, the old one still reads). After a deploy that completed "
              "(it rewrites every Secret): python -m kthw secrets rotate-key finish",
}


def _require(keys: list[EncryptionKey], step: str, command: str) -> None:
    if (now := step_of(keys)) != step:
        raise PkiError(f"`rotate-key {command}` needs the rotation at step {step!r}, it is at {now!r}: "
                       f"{NEXT_STEP[now]}")


def _refuse(problems: list[str], step: str, previous: str) -> None:
    if problems:
        raise PkiError(f"not going on to `{step}`: the deploy after `rotate-key {previous}` has not done its "
                       "part yet:\n  " + "\n  ".join(problems) + "\nNothing was changed. Fix: rerun the deploy "
                       f"until it completes, then `rotate-key {step}` again.")


def _sha256(cluster: Cluster) -> str:
    return hashlib.sha256((cluster.pki_dir / ENCRYPTION_CONFIG).read_bytes()).hexdigest()


def begin(cluster: Cluster) -> str:
    """A new key, last in the config: it reads, nothing is sealed with it yet."""
    keys = local_keys(cluster)
    _require(keys, "none", "begin")
    name = f"key{max(_number(n) for n, _ in keys) + 1}"
    write_encryption_config(cluster.pki_dir / ENCRYPTION_CONFIG, [*keys, new_key(name)])
    return name


def switch(cluster: Cluster, read: Reader) -> str:
    """The new key moves first: it seals every write from the next deploy on."""
    keys = local_keys(cluster)
    _require(keys, "begin", "switch")
    _refuse(not_reached(_sha256(cluster), read().masters), "switch", "begin")
    newest = max(keys, key=lambda k: _number(k[0]))
    write_encryption_config(cluster.pki_dir / ENCRYPTION_CONFIG, [newest, *(k for k in keys if k != newest)])
    return newest[0]


def finish(cluster: Cluster, read: Reader) -> list[str]:
    """Only the writing key stays; the names of those dropped are returned."""
    keys = local_keys(cluster)
    _require(keys, "switch", "finish")
    view = read()
    problems = not_reached(_sha256(cluster), view.masters)
    problems += [f"etcd: {n} value(s) under {', '.join(ENCRYPTED_RESOURCES.values())} sealed with {name}"
                 for name, n in stale(view.sealed, keys[0][0]).items()]
    _refuse(problems, "finish", "switch")
    retire_encryption_config(cluster.pki_dir, f"{RETIRED}{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}")
    write_encryption_config(cluster.pki_dir / ENCRYPTION_CONFIG, keys[:1])
    return [n for n, _ in keys[1:]]


def status(cluster: Cluster, read: Reader) -> tuple[str, int]:
    """Where the rotation stands, the masters' configs and etcd's counts; exit 1 if a master lags
    or a value is sealed with a key that is not the writing one (0 in step 1, where that is normal)."""
    keys = local_keys(cluster)
    step = step_of(keys)
    lines = [f"keys: {keys[0][0]} writes" + "".join(f", {n} reads" for n, _ in keys[1:]), NEXT_STEP[step]]
    try:
        view = read()
    except PkiError as exc:
        return "\n".join([*lines, f"the hosts were not read: {exc}"]), 1
    lagging = not_reached(_sha256(cluster), view.masters)
    behind = {p.split(":")[0] for p in lagging}
    for name in sorted(view.masters):
        lines.append(f"  {name:12} " + ("behind (rerun the deploy)" if name in behind
                                        else "current config, kube-apiserver restarted since"))
    lines.append("etcd: " + (", ".join(f"{n} seals {c}" for n, c in sorted(view.sealed.items())) or "no values"))
    leftover = stale(view.sealed, keys[0][0]) if step != "begin" else {}
    return "\n".join(lines), 1 if lagging or leftover else 0


def main(cluster: Cluster, step: str | None) -> tuple[str, int]:
    """``python -m kthw secrets rotate-key [begin|switch|finish]``: what to tell, and the exit code."""
    if step is None:
        return status(cluster, ssh_reader(cluster))
    if step == "begin":
        name = begin(cluster)
        return f"new key {name} added (reads only). Next: pyinfra inventory.py deploy.py (then rotate-key switch)", 0
    if step == "switch":
        name = switch(cluster, ssh_reader(cluster))
        return (f"{name} seals every write now. Next: pyinfra inventory.py deploy.py (it rewrites every Secret), "
                "then rotate-key finish"), 0
    dropped = finish(cluster, ssh_reader(cluster))
    return (f"{', '.join(dropped)} left the config. Next: pyinfra inventory.py deploy.py. Backups taken before "
            "keep their own config; restoring one adds its keys back (docs/pki.md)"), 0
