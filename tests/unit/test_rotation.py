"""CA rotation in three steps (kthw/rotation.py): the local state, the bundles, the host checks."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import stat

import pytest
import yaml
from cryptography import x509

from kthw import hostcerts, rotation
from kthw.adopt import ON_A_MASTER, adopt
from kthw.kubeconfig import write_kubeconfigs
from kthw.model import DEFAULT_CLUSTER_FILE
from kthw.pki import CA_SUBJECTS, PkiError, ensure_pki, known_trust, rotation_step, trust_bundle
from tests.conftest import make_cluster


@pytest.fixture
def cluster(tmp_path):
    c = make_cluster(yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()), tmp_path)
    ensure_pki(c)
    write_kubeconfigs(c)
    return c


def certs(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def deployed(c, started: int = 200, mtime: int = 100) -> dict[str, hostcerts.HostCerts]:
    """What a completed deploy leaves on two nodes: the bundles, the leaves, services started after."""
    pki = c.pki_dir
    bundle = certs(trust_bundle(pki))
    master = hostcerts.HostCerts(
        trust={"/var/lib/kubernetes/pki/ca.crt": bundle,
               "/etc/etcd/etcd-ca.crt": certs(trust_bundle(pki, "etcd-ca")),
               "/var/lib/kubernetes/pki/front-proxy-ca.crt": certs(trust_bundle(pki, "front-proxy-ca")),
               "configmap kube-system/kube-root-ca.crt": bundle},
        leaves={"/var/lib/kubernetes/pki/kube-apiserver.crt": certs((pki / "kube-apiserver.crt").read_bytes())[0],
                "/etc/etcd/etcd-server.crt": certs((pki / "etcd-server-master-1.crt").read_bytes())[0],
                "/var/lib/kubernetes/pki/ca-signing.crt": certs((pki / "ca.crt").read_bytes())[0]},
        mtimes={"/var/lib/kubernetes/pki/ca.crt": mtime, "/etc/etcd/etcd-server.crt": mtime},
        started={"etcd": started, "kube-apiserver": started, "kubelet": started})
    worker = hostcerts.HostCerts(
        trust={"/var/lib/kubernetes/pki/ca.crt": bundle, "/var/lib/kubelet/kubeconfig": bundle},
        leaves={"/var/lib/kubelet/pki/kubelet.crt": certs((pki / "kubelet-worker-1.crt").read_bytes())[0]},
        mtimes={"/var/lib/kubelet/pki/kubelet.crt": mtime}, started={"kubelet": started})
    return {"master-1": master, "worker-1": worker}


def test_a_rotation_trusts_the_new_cas_signs_with_them_then_drops_the_old(cluster):
    pki = cluster.pki_dir
    old = {n: (pki / f"{n}.crt").read_bytes() for n in CA_SUBJECTS}
    apiserver = (pki / "kube-apiserver.crt").read_bytes()
    assert rotation_step(pki) == "none" and trust_bundle(pki) == old["ca"]

    # 1. begin: new CAs, trusted beside the old ones, oldest first; nothing re-issued
    rotation.begin(cluster, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    assert rotation_step(pki) == "trust"
    for n in CA_SUBJECTS:
        assert stat.S_IMODE((pki / f"{n}.next.key").stat().st_mode) == 0o600
        assert trust_bundle(pki, n) == old[n] + (pki / f"{n}.next.crt").read_bytes()
    assert not ensure_pki(cluster).changed
    assert (pki / "kube-apiserver.crt").read_bytes() == apiserver
    assert write_kubeconfigs(cluster)["admin"] == "rewritten"  # the kubeconfigs trust both
    admin = yaml.safe_load((cluster.kubeconfig_dir / "admin.kubeconfig").read_text())
    ca_data = base64.b64decode(admin["clusters"][0]["cluster"]["certificate-authority-data"])
    assert ca_data == trust_bundle(pki)
    bundle_step1 = trust_bundle(pki)

    # 2. switch: the new CAs sign, every leaf is re-issued by them, the bundle stays the same bytes
    rotation.switch(cluster, lambda: deployed(cluster))
    assert rotation_step(pki) == "switch"
    assert trust_bundle(pki) == bundle_step1
    report = ensure_pki(cluster)
    # (same subject as the old CA: it is the signature that no longer verifies)
    assert all(report[n] == "re-issued: signature does not verify against the CA"
               for n in ("kube-apiserver", "etcd-server-master-1", "front-proxy-client", "kubelet-worker-1"))
    new_ca = certs((pki / "ca.crt").read_bytes())[0]
    certs((pki / "kube-apiserver.crt").read_bytes())[0].verify_directly_issued_by(new_ca)
    assert (pki / "ca.previous.crt").read_bytes() == old["ca"]

    # 3. finish: the old CAs leave the bundles, kept aside 0700; hosts still holding them are
    # still this cluster (the identity guard accepts them)
    write_kubeconfigs(cluster)
    rotation.finish(cluster, lambda: deployed(cluster))
    assert rotation_step(pki) == "none"
    assert trust_bundle(pki) == (pki / "ca.crt").read_bytes() != old["ca"]
    retired = list(pki.glob("retired-*"))
    assert len(retired) == 1 and stat.S_IMODE(retired[0].stat().st_mode) == 0o700
    assert (retired[0] / "ca.crt").read_bytes() == old["ca"]
    accepted = known_trust(pki)
    assert {hashlib.sha256(old["ca"]).hexdigest(), hashlib.sha256(bundle_step1).hexdigest()} <= accepted
    assert not ensure_pki(cluster).changed


def test_switch_refuses_while_a_node_does_not_trust_the_new_ca(cluster):
    rotation.begin(cluster)
    hosts = deployed(cluster)
    old_only = certs((cluster.pki_dir / "ca.crt").read_bytes())
    hosts["worker-1"].trust["/var/lib/kubelet/kubeconfig"] = old_only
    with pytest.raises(PkiError) as err:
        rotation.switch(cluster, lambda: hosts)
    assert "worker-1: /var/lib/kubelet/kubeconfig does not trust the new ca yet" in str(err.value)
    assert "Nothing was changed" in str(err.value)
    assert rotation_step(cluster.pki_dir) == "trust"


def test_switch_refuses_while_a_service_still_runs_on_old_files(cluster):
    rotation.begin(cluster)
    hosts = deployed(cluster, started=100, mtime=200)  # the files came after the last start
    with pytest.raises(PkiError) as err:
        rotation.switch(cluster, lambda: hosts)
    assert "master-1: etcd has not restarted since /etc/etcd/etcd-server.crt changed" in str(err.value)
    assert "worker-1: kubelet has not restarted since /var/lib/kubelet/pki/kubelet.crt changed" in str(err.value)


def test_finish_refuses_while_a_node_presents_a_certificate_of_the_old_ca(cluster):
    rotation.begin(cluster)
    before = deployed(cluster)  # the leaves from the old CA
    rotation.switch(cluster, lambda: before)
    ensure_pki(cluster)
    with pytest.raises(PkiError) as err:
        rotation.finish(cluster, lambda: before)
    text = str(err.value)
    assert "master-1: /var/lib/kubernetes/pki/kube-apiserver.crt is still from the old CA" in text
    assert "master-1: /var/lib/kubernetes/pki/ca-signing.crt is still from the old CA" in text
    assert "worker-1: /var/lib/kubelet/pki/kubelet.crt is still from the old CA" in text
    assert rotation_step(cluster.pki_dir) == "switch"


def test_steps_come_in_order(cluster):
    with pytest.raises(PkiError, match="needs the rotation at step 'trust', it is at 'none'"):
        rotation.switch(cluster, dict)
    rotation.begin(cluster)
    with pytest.raises(PkiError, match="rotate-ca switch"):
        rotation.begin(cluster)
    assert rotation.main(cluster, None).startswith("step 1 of 3")


def test_a_half_moved_rotation_is_an_error(cluster):
    rotation.begin(cluster)
    (cluster.pki_dir / "etcd-ca.next.crt").unlink()
    with pytest.raises(PkiError, match="etcd-ca.next.crt is missing"):
        ensure_pki(cluster)


def test_the_hosts_answer_is_parsed(cluster):
    pki = cluster.pki_dir
    kubeconfig = (cluster.kubeconfig_dir / "kubelet-worker-1.kubeconfig").read_text()
    lines = [line for line in kubeconfig.splitlines() if "certificate-authority-data" in line
             or "client-certificate-data" in line]
    text = ("==> file /var/lib/kubernetes/pki/ca.crt 100\n" + (pki / "ca.crt").read_text()
            + "==> file /var/lib/kubelet/pki/kubelet.crt 101\n" + (pki / "kubelet-worker-1.crt").read_text()
            + "==> file /var/lib/kubelet/kubeconfig 102\n" + "\n".join(lines) + "\n"
            + "==> unit kubelet 150\n==> configmap kube-system/kube-root-ca.crt\n" + (pki / "ca.crt").read_text())
    host = hostcerts.parse_host(text)
    ca = certs((pki / "ca.crt").read_bytes())
    assert host.trust == {"/var/lib/kubernetes/pki/ca.crt": ca, "/var/lib/kubelet/kubeconfig": ca,
                          "kube-system/kube-root-ca.crt": ca}
    assert set(host.leaves) == {"/var/lib/kubelet/pki/kubelet.crt", "/var/lib/kubelet/kubeconfig"}
    assert host.mtimes["/var/lib/kubelet/kubeconfig"] == 102 and host.started == {"kubelet": 150}


def test_adopt_refuses_during_a_rotation(cluster, tmp_path):
    rotation.begin(cluster)
    pki = cluster.pki_dir
    files = {path: (pki / name).read_bytes() for name, path in ON_A_MASTER.items()}
    files["/var/lib/kubernetes/pki/ca.crt"] = trust_bundle(pki)
    fresh = make_cluster(yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text()), tmp_path / "fresh")
    with pytest.raises(PkiError, match="a CA rotation is under way"):
        adopt(fresh, lambda node, paths: {p: files.get(p, b'weave-passwd: "x"') for p in paths})
