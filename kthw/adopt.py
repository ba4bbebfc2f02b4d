"""Adopt a running cluster's identity into the local state: ``python -m kthw pki adopt``.

A fresh clone, a second operator machine or a lost ``.kthw/`` has no PKI, and ``kthw pki``
would make a new one: new CAs, service-account key and encryption key, which the deploy then
refuses to put over the running cluster's (``operations/plan.py``). Adopting copies the
running cluster's identity from a master instead, over SSH:

- the three CAs with their keys (cluster, etcd, front proxy),
- the service-account key pair,
- the encryption-at-rest config,
- Weave Net's mesh password (``cni: weave``, from the first master's add-on manifest).

Then the usual ``ensure_pki`` re-issues every leaf certificate the adopted CAs did not sign
(keys kept where they match) and the kubeconfigs follow, so the next deploy restarts the
components one at a time with certificates of the same identity: every Secret still decrypts,
every service-account token and kubeconfig signed before still verifies.

Local files that differ are moved to ``<pki>/replaced-<UTC time>/`` first (0700), never
deleted. Keys are written 0600 and never printed.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shlex
import tarfile
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kthw.model import POD_SUBNETS, Cluster, Node, write_pod_subnets
from kthw.paths import ADDONS_DIR, K8S_PKI, POD_SUBNETS_RECORD
from kthw.paths import ENCRYPTION_CONFIG as HOST_ENCRYPTION_CONFIG
from kthw.pki import (
    CA_NAME,
    ENCRYPTION_CONFIG,
    ETCD_CA_NAME,
    FRONT_PROXY_CA_NAME,
    SERVICE_ACCOUNT,
    WEAVE_PASSWORD,
    PkiError,
    write_private,
    write_public,
)
from kthw.ssh import SshError, as_root, ssh_run

# local file in the PKI folder: where a master holds it (operations/control_plane.py)
ON_A_MASTER = {
    **{f"{ca}.{ext}": f"{K8S_PKI}/{ca}.{ext}" for ca in (CA_NAME, ETCD_CA_NAME, FRONT_PROXY_CA_NAME)
       for ext in ("crt", "key")},
    f"{SERVICE_ACCOUNT}.key": f"{K8S_PKI}/{SERVICE_ACCOUNT}.key",
    f"{SERVICE_ACCOUNT}.pub": f"{K8S_PKI}/{SERVICE_ACCOUNT}.pub",
    ENCRYPTION_CONFIG: HOST_ENCRYPTION_CONFIG,
}
WEAVE_MANIFEST = f"{ADDONS_DIR}/05-weave-password.yaml"

# (node, remote paths) -> {remote path: bytes}; raises PkiError
Fetch = Callable[[Node, list[str]], dict[str, bytes]]


def ssh_fetch(name: str, connection: dict) -> Fetch:
    """Read files from a node with one ``tar`` as root over SSH (pyinfra's connection data). A
    file the node lacks is left out of the archive (the caller says which one is missing)."""
    def fetch(node: Node, paths: list[str]) -> dict[str, bytes]:
        try:  # tar names the files it could not read; nothing secret in that
            tar = "tar --ignore-failed-read -C / -cf - " + " ".join(shlex.quote(p.lstrip("/")) for p in paths)
            out = ssh_run(name, connection, as_root(connection, f"sh -c {shlex.quote(tar + ' 2>/dev/null')}"))
        except SshError as exc:
            raise PkiError(f"reading the identity failed: {exc}") from None
        found = {}
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    found["/" + member.name] = tar.extractfile(member).read()
        return found
    return fetch


def _check(files: dict[str, bytes]) -> None:
    """Each CA key belongs to its certificate, and the service-account key to its .pub."""
    for ca in (CA_NAME, ETCD_CA_NAME, FRONT_PROXY_CA_NAME):
        if len(x509.load_pem_x509_certificates(files[f"{ca}.crt"])) > 1:
            raise PkiError(f"{ca}.crt on the master holds two CAs: a CA rotation is under way (docs/pki.md: CA "
                           "rotation). Not adopted. Fix: finish the rotation from the operator machine that "
                           "began it, then adopt")
        cert = x509.load_pem_x509_certificate(files[f"{ca}.crt"])
        key = serialization.load_pem_private_key(files[f"{ca}.key"], password=None)
        if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
                != key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo):
            raise PkiError(f"{ca}.key on the master does not belong to {ca}.crt there: not adopted")
    sa = serialization.load_pem_private_key(files[f"{SERVICE_ACCOUNT}.key"], password=None)
    pub = sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if serialization.load_pem_public_key(files[f"{SERVICE_ACCOUNT}.pub"]).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) != pub:
        raise PkiError("service-account.key and service-account.pub on the master are not a pair: not adopted")


def adopt(cluster: Cluster, fetch: Fetch, source: Node | None = None,
          now: dt.datetime | None = None) -> dict[str, str]:
    """Copy the identity of the running cluster from ``source`` (default: the first master) into
    the local PKI folder. Returns {local file: "adopted" | "already the same"}."""
    files, record = _fetch_identity(cluster, fetch, source or cluster.masters[0])
    result = _write_identity(cluster.pki_dir, files, now)
    # The nodes' pod subnets (kept by masters deployed since the record existed): without them a
    # deploy from here would give nodes the first free subnets, moving running ones.
    if record is not None:
        result[POD_SUBNETS] = _adopt_pod_subnets(cluster, record)
    return result


def _fetch_identity(cluster: Cluster, fetch: Fetch, source: Node) -> tuple[dict[str, bytes], bytes | None]:
    """({local file: bytes}, the pod-subnets record or None), read from ``source`` (and, with
    Weave, the first master) and checked; nothing written yet."""
    if not source.is_master:
        raise PkiError(f"{source.name} is not a master: only masters hold the cluster's identity")
    got = fetch(source, [*ON_A_MASTER.values(), POD_SUBNETS_RECORD])
    missing = [p for p in ON_A_MASTER.values() if p not in got]
    if missing:
        raise PkiError(f"{source.name} lacks {', '.join(missing)}. Either it is not a deployed master of this "
                       "cluster, or the cluster was deployed by a version that kept the etcd and front-proxy "
                       "CA keys only on the operator machine: run the deploy once from the machine that has "
                       "the original .kthw/ (it puts them on the masters), then adopt")
    files = {name: got[path] for name, path in ON_A_MASTER.items()}
    if cluster.cni == "weave":
        files[WEAVE_PASSWORD] = _weave_password(cluster, fetch)
    _check(files)
    return files, got.get(POD_SUBNETS_RECORD)


def _weave_password(cluster: Cluster, fetch: Fetch) -> bytes:
    """Weave Net's mesh password (with its newline), from the first master's add-on manifest."""
    first = cluster.masters[0]  # the one that applies the add-ons
    manifest = fetch(first, [WEAVE_MANIFEST]).get(WEAVE_MANIFEST)
    found = re.search(rb'^\s*weave-passwd:\s*"([^"]+)"\s*$', manifest or b"", re.M)
    if not found:
        raise PkiError(f"no Weave password in {WEAVE_MANIFEST} on {first.name}: not adopted")
    return found.group(1) + b"\n"


def _write_identity(pki: Path, files: dict[str, bytes], now: dt.datetime | None) -> dict[str, str]:
    """Write each file into ``pki`` (keys 0600), a differing local one first moved to
    ``replaced-<UTC time>/``. Returns {local file: "adopted ..." | "already the same"}."""
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    backup = pki / f"replaced-{stamp}"
    result = {}
    for name, data in files.items():
        path = pki / name
        if path.exists() and path.read_bytes() == data:
            result[name] = "already the same"
            continue
        if path.exists():
            backup.mkdir(mode=0o700, exist_ok=True)
            os.replace(path, backup / name)
        secret = name.endswith(".key") or name in (ENCRYPTION_CONFIG, WEAVE_PASSWORD)
        (write_private if secret else write_public)(path, data)
        result[name] = "adopted" + (f" (the local one moved to {backup.name}/)" if (backup / name).exists() else "")
    return result


def _adopt_pod_subnets(cluster: Cluster, record: bytes) -> str:
    """Write the masters' pod-subnets record locally unless it is already there."""
    local = cluster.state_dir / POD_SUBNETS
    same = local.is_file() and local.read_bytes() == record
    if not same:
        write_pod_subnets(cluster.state_dir, record.decode())
    return "already the same" if same else "adopted"


def main(cluster: Cluster, source_name: str | None = None) -> dict[str, str]:
    """``python -m kthw pki adopt``: the first master (or ``source_name``) over the inventory's SSH."""
    from kthw.inventory import InventoryError, connections

    names = {n.name for n in cluster.masters}
    if source_name and source_name not in names:
        raise PkiError(f"--from {source_name}: not a master of {cluster.source} (masters: {', '.join(sorted(names))})")
    source = cluster.node(source_name) if source_name else cluster.masters[0]
    # only the machines read from must be up: the source, and the first master for Weave's password
    needed = sorted({source.name, *([cluster.masters[0].name] if cluster.cni == "weave" else [])})
    try:
        conns = connections(cluster, limit=needed)
    except InventoryError as exc:
        raise PkiError(str(exc)) from None
    missing = [n for n in needed if n not in conns]
    if missing:
        raise PkiError(f"{', '.join(missing)} not reachable (not running?)")
    by_node = {n: ssh_fetch(n, conns[n]) for n in needed}

    def fetch(node: Node, paths: list[str]) -> dict[str, bytes]:
        try:
            return by_node[node.name](node, paths)
        except (OSError, tarfile.TarError) as exc:
            raise PkiError(f"reading from {node.name} failed: {exc}") from None
    try:
        return adopt(cluster, fetch, source)
    except ValueError as exc:  # a PEM that does not parse
        raise PkiError(f"the identity read from {source.name} does not parse ({exc}): not adopted") from None
