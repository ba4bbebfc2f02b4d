"""The cluster's identity survives a lost local state: a fresh clone's new PKI is refused by the
deploy before any host is touched, and `python -m kthw pki adopt` brings the running cluster's
identity home, after which Secrets and tokens made before still work."""

from __future__ import annotations

import shutil
import sys

from tests.lab.lab import Lab, reference_only, sh
from tests.lab.test_cluster import ADMIN, masters


def started(lab: Lab, m: str) -> str:
    return lab.ssh(m, "systemctl show -p ExecMainStartTimestampMonotonic --value kube-apiserver").strip()


def test_a_lost_local_state_is_refused_then_adopted(lab, tmp_path):
    reference_only(lab)
    lab.kubectl("create", "secret", "generic", "kthw-identity-probe", "--from-literal=k=before")
    token = lab.kubectl("create", "token", "default", "--duration=1h").strip()
    before = {m: started(lab, m) for m in masters(lab)}
    state = lab.cluster.state_dir
    for sub in ("pki", "kubeconfigs"):  # as on a fresh clone or a second operator machine
        shutil.move(state / sub, tmp_path / sub)
    try:
        refused = sh([sys.executable, "-m", "pyinfra", "-y", "inventory.py", "deploy.py"], env=lab.env, check=False)
        assert refused.returncode != 0
        assert "holds another cluster identity" in refused.stdout + refused.stderr
        assert {m: started(lab, m) for m in masters(lab)} == before  # nothing was touched
        out = sh([sys.executable, "-m", "kthw", "pki", "adopt"], env=lab.env)
        assert "ca.key" in out.stdout and "PRIVATE KEY" not in out.stdout + out.stderr
        lab.deploy(label="deploy after adopting the identity")
    except BaseException:
        for sub in ("pki", "kubeconfigs"):  # leave the lab as it was
            shutil.rmtree(state / sub, ignore_errors=True)
            shutil.move(tmp_path / sub, state / sub)
        raise
    for name in ("ca.crt", "ca.key", "service-account.key", "encryption-config.yaml"):
        assert (state / "pki" / name).read_bytes() == (tmp_path / "pki" / name).read_bytes(), name
    assert lab.kubectl("get", "secret", "kthw-identity-probe", "-o", "jsonpath={.data.k}") == "YmVmb3Jl"  # "before"
    whoami = sh([str(lab.kubectl_binary), "--kubeconfig=/dev/null", "--token", token, "--server",
                 f"https://{lab.cluster.loadbalancer.ip}:6443",
                 "--certificate-authority", str(state / "pki" / "ca.crt"),
                 "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"], check=False).stdout
    assert whoami == "system:serviceaccount:default:default", whoami
    for m in masters(lab):
        assert lab.ssh(m, f"{ADMIN} get --raw /readyz").strip() == "ok"
    lab.kubectl("delete", "secret", "kthw-identity-probe")
