"""Rotating the cluster's CAs without downtime: ``python -m kthw pki rotate-ca <step>``.

A CA is trusted everywhere (every component, every kubeconfig, every pod's ``ca.crt``), so it
cannot be swapped in one go: a client that does not trust the new CA yet would refuse every
certificate it signed. The rotation takes three steps, each followed by an ordinary deploy:

1. ``begin``   new CAs (cluster, etcd, front proxy) are made and trusted beside the old ones;
               the old ones still sign. The deploy hands out the two-CA bundles and restarts
               what reads them; the add-on pods restart once the controller-manager published
               the bundle (kube-root-ca.crt), so their API clients trust the new CA too.
2. ``switch``  the new CAs sign: every leaf certificate and kubeconfig is re-issued; the old CAs
               are still trusted, so old and new certificates work side by side meanwhile.
3. ``finish``  the old CAs are dropped from every bundle (kept in ``<pki>/retired-<time>/``).

``switch`` and ``finish`` first read every node over SSH and refuse, naming the node and file,
unless the previous step's deploy reached it: the new CAs trusted everywhere before they sign,
every certificate re-issued and every service restarted with it before the old CAs go. The
service-account key and the encryption key are not CAs and stay (tokens and Secrets keep
working). Without a step, the command says where the rotation stands and what comes next.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kthw.castore import (
    CA_NAME,
    CA_SUBJECTS,
    NEXT,
    add_next_ca,
    ca_path,
    promote_next,
    retire_previous,
    rotation_step,
)
from kthw.hostcerts import TRUST_FILES, HostCerts, Reader, owed_restarts, ssh_reader
from kthw.model import Cluster
from kthw.pki import new_ca
from kthw.pkifiles import PkiError


def _ca_of(path: str) -> str:
    """Which CA a trust entry is for: by file name, kubeconfigs and the configmap are the cluster CA's."""
    return TRUST_FILES.get(os.path.basename(path), CA_NAME)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def problems_before_switch(pki_dir: Path, hosts: dict[str, HostCerts]) -> list[str]:
    """Everything must trust the new CAs before they sign anything."""
    new = {name: _load(ca_path(pki_dir, name, NEXT)) for name in CA_SUBJECTS}
    out = []
    for node, host in sorted(hosts.items()):
        for path, certs in sorted(host.trust.items()):
            if new[_ca_of(path)] not in certs:
                out.append(f"{node}: {path} does not trust the new {_ca_of(path)} yet")
        out += [f"{node}: {o}" for o in owed_restarts(host)]
    return out


def problems_before_finish(pki_dir: Path, hosts: dict[str, HostCerts]) -> list[str]:
    """Every certificate in use must come from the new CAs before the old ones are dropped."""
    signers = [_load(ca_path(pki_dir, name)) for name in CA_SUBJECTS]

    def signed_by_new(cert: x509.Certificate) -> bool:
        for ca in signers:
            if cert == ca:
                return True
            try:
                cert.verify_directly_issued_by(ca)
                return True
            except (InvalidSignature, ValueError, TypeError):
                continue
        return False

    out = []
    for node, host in sorted(hosts.items()):
        out += [f"{node}: {path} is still from the old CA" for path, cert in sorted(host.leaves.items())
                if not signed_by_new(cert)]
        out += [f"{node}: {o}" for o in owed_restarts(host)]
    return out


NEXT_STEP = {
    "none": "no CA rotation under way. Start one: python -m kthw pki rotate-ca begin",
    "trust": "step 1 of 3 (new CAs trusted, old ones still sign). After a deploy that completed: "
             "python -m kthw pki rotate-ca switch",
    "switch": "step 2 of 3 (new CAs sign, old ones still trusted). After a deploy that completed: "
              "python -m kthw pki rotate-ca finish",
}


def _require(pki_dir: Path, step: str, command: str) -> None:
    if (now := rotation_step(pki_dir)) != step:
        raise PkiError(f"`rotate-ca {command}` needs the rotation at step {step!r}, it is at {now!r}: {NEXT_STEP[now]}")


def _refuse_unless_reached(problems: list[str], step: str, previous: str) -> None:
    if problems:
        raise PkiError(f"not going on to `{step}`: the deploy after `rotate-ca {previous}` has not reached every "
                       "node:\n  " + "\n  ".join(problems) + "\nNothing was changed. Fix: rerun the deploy until "
                       f"it completes, then `rotate-ca {step}` again.")


def begin(cluster: Cluster, now: dt.datetime | None = None) -> list[str]:
    """Make the new CAs (``<ca>.next.crt``/``.key``); nothing signs with them yet."""
    pki = cluster.pki_dir
    _require(pki, "none", "begin")
    now = now or dt.datetime.now(dt.UTC)
    return [add_next_ca(pki, name, *new_ca(cluster, name, now)).name for name in CA_SUBJECTS]


def switch(cluster: Cluster, read: Reader) -> list[str]:
    """The new CAs sign from now on; the old ones become ``<ca>.previous``."""
    pki = cluster.pki_dir
    _require(pki, "trust", "switch")
    _refuse_unless_reached(problems_before_switch(pki, read()), "switch", "begin")
    return [path.name for path in promote_next(pki)]


def finish(cluster: Cluster, read: Reader, now: dt.datetime | None = None) -> list[str]:
    """Drop the old CAs from every bundle; keep them aside in ``retired-<time>/``."""
    pki = cluster.pki_dir
    _require(pki, "switch", "finish")
    _refuse_unless_reached(problems_before_finish(pki, read()), "finish", "switch")
    return [str(path) for path in retire_previous(pki, now or dt.datetime.now(dt.UTC))]


def main(cluster: Cluster, step: str | None) -> str:
    """``python -m kthw pki rotate-ca [begin|switch|finish]``; returns what to tell the operator."""
    if step is None:
        return NEXT_STEP[rotation_step(cluster.pki_dir)]
    if step == "begin":
        done = begin(cluster)
        return f"new CAs made ({', '.join(done)}). Next: pyinfra inventory.py deploy.py (then rotate-ca switch)"
    if step == "switch":
        switch(cluster, ssh_reader(cluster))
        return ("the new CAs sign now; every certificate is re-issued below. Next: pyinfra inventory.py deploy.py "
                "(then rotate-ca finish)")
    retired = finish(cluster, ssh_reader(cluster))
    return (f"the old CAs are retired ({os.path.dirname(retired[0])}). Next: pyinfra inventory.py deploy.py; "
            "kubeconfigs from before the rotation stop working then")

