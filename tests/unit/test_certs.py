"""`python -m kthw certs`: one line per certificate, exit 1 inside the window."""

from __future__ import annotations

import datetime as dt

import yaml
from cryptography import x509

from kthw.certs import report, rows
from kthw.hostcerts import HostCerts
from kthw.model import DEFAULT_CLUSTER_FILE
from kthw.pki import ensure_pki
from tests.conftest import make_cluster


def test_every_certificate_is_listed_and_the_window_decides_the_exit_code(tmp_path):
    c = make_cluster(yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()), tmp_path)
    ensure_pki(c)
    load = lambda name: x509.load_pem_x509_certificate((c.pki_dir / name).read_bytes())  # noqa: E731
    hosts = {"master-1": HostCerts(trust={"/etc/etcd/etcd-ca.crt": [load("etcd-ca.crt")]},
                                   leaves={"/etc/etcd/etcd-server.crt": load("etcd-server-master-1.crt")})}
    now = dt.datetime.now(dt.UTC)
    found = rows(hosts, now)
    assert [(r.node, r.path, r.what) for r in found] == [
        ("master-1", "/etc/etcd/etcd-ca.crt", "CA CN=ETCD-CA"),
        ("master-1", "/etc/etcd/etcd-server.crt", "CN=etcd-server")]
    leaf_days = found[1].days
    assert leaf_days == c.pki.cert_validity_days - 1
    text, code = report(found, within=30)
    assert code == 0 and "2 certificates, none expires within 30 days" in text
    text, code = report(found, within=leaf_days + 1)
    assert code == 1 and "1 of 2 certificates expire within" in text and "rotate the CAs" not in text
    # an expired certificate counts negative days
    late = rows(hosts, now + dt.timedelta(days=c.pki.cert_validity_days + 2))
    assert late[1].days < 0
