"""Every certificate on every node, with the days it has left: ``python -m kthw certs``.

For a cron job or a monitoring check: it reads every node that holds certificates (masters,
workers, an etcd-only member) over SSH (one command each, the same as ``rotate-ca``: certificate
files and the certificates inside kubeconfigs, never a key), prints one line per certificate and
exits 1 when any expires within the renewal window (``pki.renew_before_days``, or ``--within
DAYS``). A leaf certificate is renewed by rerunning the deploy; a CA by rotating it
(docs/pki.md: CA rotation).

    $ python -m kthw certs
    NODE       FILE                                         CERTIFICATE             EXPIRES     DAYS
    master-1   /etc/etcd/etcd-ca.crt                        CA CN=ETCD-CA           2036-11-24  3650
    ...
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from kthw.hostcerts import HostCerts


@dataclass(frozen=True)
class Row:
    node: str
    path: str
    what: str  # "CA CN=..." or "CN=..."
    expires: dt.datetime
    days: int


def rows(hosts: dict[str, HostCerts], now: dt.datetime) -> list[Row]:
    out = []

    def add(node: str, path: str, cert: x509.Certificate, ca: bool) -> None:
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = f"CN={cn[0].value}" if cn else cert.subject.rfc4514_string()
        left = cert.not_valid_after_utc - now
        out.append(Row(node, path, ("CA " if ca else "") + name, cert.not_valid_after_utc,
                       left.days if left.total_seconds() >= 0 else -((-left).days + 1)))

    for node, host in sorted(hosts.items()):
        for path, certs in sorted(host.trust.items()):
            for cert in certs:
                add(node, path, cert, ca=True)
        for path, cert in sorted(host.leaves.items()):
            add(node, path, cert, ca=False)
    return out


def due(found: list[Row], within: int) -> list[Row]:
    """The certificates inside the renewal window: fewer than ``within`` days left (``kthw
    certs`` and ``kthw health`` judge alike)."""
    return [r for r in found if r.days < within]


def report(found: list[Row], within: int) -> tuple[str, int]:
    """The table and a closing line; exit code 1 when any certificate is inside the window."""
    width = max([len(r.path) for r in found] + [4])
    lines = [f"{'NODE':12} {'FILE':{width}} {'CERTIFICATE':40} {'EXPIRES':10}  DAYS"]
    lines += [f"{r.node:12} {r.path:{width}} {r.what:40} {r.expires:%Y-%m-%d}  {r.days:>4}" for r in found]
    due_now = due(found, within)
    if not due_now:
        lines.append(f"{len(found)} certificates, none expires within {within} days")
        return "\n".join(lines), 0
    cas = [r for r in due_now if r.what.startswith("CA ")]
    lines.append(f"{len(due_now)} of {len(found)} certificates expire within {within} days: rerun the deploy to "
                 "renew them" + (", and rotate the CAs (docs/pki.md: CA rotation)" if cas else ""))
    return "\n".join(lines), 1
