"""The control plane on every master: binaries → certificates, keys and kubeconfigs →
encryption, audit, authentication and admission config → units → running → apiserver ready.

kube-apiserver: Node,RBAC authorization, NodeRestriction, Pod Security (``baseline``
enforced by default), Secrets encrypted at rest, audit log, service-account signing keys,
kubelet client certificate; anonymous requests only to the health endpoints, TLS 1.2 at least,
no profiling endpoint (CIS Kubernetes Benchmark). kube-controller-manager and kube-scheduler
run on every master with leader election (one leader at a time) and talk to their own apiserver.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import server

from kthw import components, key_rotation
from kthw.cluster_secrets import ENCRYPTED_RESOURCES, read_encryption_keys
from kthw.cluster_secrets import ENCRYPTION_CONFIG as CLUSTER_ENCRYPTION_CONFIG
from kthw.commands import (
    APISERVER_READY,
    KUBECTL,
    apiservers_ready,
    only_if_peers_healthy,
    wait_until,
)
from kthw.context import DeployRefused, HostContext, Wants
from kthw.model import moved_pod_subnets, pod_subnets, pod_subnets_text
from kthw.ops import (
    Directory,
    ManagedFile,
    command_when,
    directories_present,
    files_synced,
    placed,
    service_restarted_in_turn,
    service_running,
)
from kthw.paths import (
    ADMIN_KUBECONFIG,
    CONTROLLER_MANAGER_KUBECONFIG,
    ENCRYPTION_CONFIG,
    ETC_K8S,
    K8S_DIR,
    K8S_LOG_DIR,
    K8S_PKI,
    POD_SUBNETS_RECORD,
    SCHEDULER_KUBECONFIG,
    unit_file,
)

COMPONENT = components.CONTROL_PLANE

UNITS = COMPONENT.units


def wants(ctx: HostContext) -> Wants:
    w = Wants(services=list(UNITS))
    w.dirs = [Directory(K8S_DIR, 0o755), Directory(K8S_PKI, 0o700),
              Directory(ETC_K8S, 0o755), Directory(K8S_LOG_DIR, 0o750)]
    w.files["binaries"] = ctx.binaries({"kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                        "kubectl"})
    names = ["ca.crt", "ca.key", "etcd-ca.crt", "kube-apiserver.crt", "kube-apiserver.key",
             "apiserver-kubelet-client.crt", "apiserver-kubelet-client.key",
             "apiserver-etcd-client.crt", "apiserver-etcd-client.key",
             "service-account.key", "service-account.pub",
             "front-proxy-ca.crt", "front-proxy-client.crt", "front-proxy-client.key",
             # every CA key on every master, as kubeadm keeps them: any master can re-issue, and
             # `python -m kthw pki adopt` can copy the whole identity from one
             "etcd-ca.key", "front-proxy-ca.key"]
    w.files["certificates"] = [ctx.pki_file(n, f"{K8S_PKI}/{n}") for n in names]
    # The controller-manager signs approved CSRs with the cluster CA: its certificate alone (ca.crt
    # is the trust bundle, two CAs during a rotation, and the signer takes exactly one).
    w.files["certificates"].append(ctx.pki_file("ca.crt", f"{K8S_PKI}/ca-signing.crt", signer=True))
    w.files["encryption config"] = [
        ctx.pki_file("encryption-config.yaml", ENCRYPTION_CONFIG)
    ]
    w.files["audit policy"] = [ctx.template_file(f"{ETC_K8S}/audit-policy.yaml")]
    w.files["authentication config"] = [ctx.template_file(f"{ETC_K8S}/authentication-config.yaml")]
    w.files["admission config"] = [ctx.template_file(f"{ETC_K8S}/admission-config.yaml")]
    w.files["kubeconfigs"] = [
        ctx.kubeconfig_file("kube-controller-manager", CONTROLLER_MANAGER_KUBECONFIG),
        ctx.kubeconfig_file("kube-scheduler", SCHEDULER_KUBECONFIG),
        ctx.kubeconfig_file("admin-local", ADMIN_KUBECONFIG),
    ]
    for unit in UNITS:
        w.files[f"{unit} unit"] = [ctx.template_file(unit_file(unit))]
    # The nodes' pod subnets, kept on every master too: `kthw pki adopt` brings them back to
    # another operator machine, and a plan that would move a running node's subnet is refused.
    w.files["pod subnets"] = [ManagedFile.text(POD_SUBNETS_RECORD, pod_subnets_text(pod_subnets(ctx.cluster)))]
    w.queries["text_of"] = [POD_SUBNETS_RECORD]
    if ctx.is_first_master and writing_key(ctx):  # step 2 of a key rotation: is a rewrite owed?
        w.queries["sealed_with"] = {"script": key_rotation.SEALED_WITH_SCRIPT, "arg": key_rotation.SEALED_WITH_ARG}
    refuse_pod_subnet_moves(ctx)
    return w


def writing_key(ctx: HostContext) -> str | None:
    """In step 2 of an encryption-key rotation, the key that now seals every write."""
    keys = read_encryption_keys(ctx.cluster.pki_dir / CLUSTER_ENCRYPTION_CONFIG)
    return keys[0][0] if keys and key_rotation.step_of(keys) == "switch" else None


def secrets_rewritten(ctx: HostContext) -> None:
    """Step 2 of a key rotation, once every apiserver seals with the new key (after the control
    plane barrier): every encrypted resource is read and written back, so etcd holds it sealed
    with that key, then etcd's values are counted; the run fails if any is sealed otherwise. Only
    while the host snapshot counted such a value: a rerun after it changes nothing."""
    key = writing_key(ctx)
    left = key_rotation.stale(ctx.facts.get("sealed_with") or {}, key) if key else {}
    if not left:
        return
    # A write that races with ours fails ours (a conflict) but was sealed with the new key
    # anyway; the count decides, and the whole pass is tried three times.
    rewrite = " && ".join(f"{{ {KUBECTL} get {res} -A -o json | {KUBECTL} replace -f - >/dev/null 2>&1 || true; }}"
                          for res in ENCRYPTED_RESOURCES)
    proof = key_rotation.sealed_with_command(only=key)
    said = ", ".join(f"{n} with {name}" for name, n in left.items())
    server.shell(name=f"control plane | every Secret rewritten with {key} ({said} before), none left sealed otherwise",
                 commands=[f"for try in 1 2 3; do {rewrite} && {proof} && exit 0; sleep 2; done; "
                           f"echo 'values still sealed with another key' >&2; {proof}; exit 1"])


def refuse_pod_subnet_moves(ctx: HostContext) -> None:
    """A node's pod subnet never moves under its running pods (say, planned from an operator
    machine that lost the record): its pods would become unreachable."""
    moved = moved_pod_subnets((ctx.facts.get("text_of") or {}).get(POD_SUBNETS_RECORD), ctx.cluster)
    if moved and not ctx.allow("kthw_move_pod_subnets"):
        said = ", ".join(f"{n} {a} -> {b}" for n, (a, b) in moved.items())
        raise DeployRefused(
            f"{ctx.node.name} records other pod subnets than this plan gives: {said}. A running node's pods "
            f"would lose their network. Nothing was changed. Fix: bring the record here with `python -m kthw pki "
            f"adopt` (it copies {POD_SUBNETS_RECORD} to {ctx.cluster.state_dir}/pod-subnets.yaml), or pin "
            "nodes[].pod_cidr; to move them on purpose, rerun with --data kthw_move_pod_subnets=yes.")


def deploy(ctx: HostContext, w: Wants) -> None:
    snap = ctx.snapshot
    directories_present(w.dirs, snap, name="control plane | directories")
    binaries = placed(w.files["binaries"], snap, name="control plane | binaries")
    certs = placed(w.files["certificates"], snap, name="control plane | certificates and keys")
    enc = placed(w.files["encryption config"], snap, name="control plane | encryption at rest config")
    audit = placed(w.files["audit policy"], snap, name="control plane | audit policy")
    authn = placed(w.files["authentication config"], snap,
                   name="control plane | authentication config (anonymous: health endpoints only)")
    admission = placed(w.files["admission config"], snap,
                       name="control plane | admission config (Pod Security levels by default)")
    kubeconfigs = placed(w.files["kubeconfigs"], snap, name="control plane | kubeconfigs")
    files_synced(w.files["pod subnets"], snap, name="control plane | record of the nodes' pod subnets")
    units = {}
    for unit in host.loop(UNITS):
        units[unit] = placed(w.files[f"{unit} unit"], snap, name=f"control plane | {unit} unit")
    apiserver = service_running("kube-apiserver", snap, reload_on=list(units.values()),
                                name="control plane | kube-apiserver running")
    # Masters take turns: HAProxy always has a ready apiserver to send clients to.
    restarted = service_restarted_in_turn(
        "kube-apiserver", snap, restart_on=[binaries, certs, enc, audit, authn, admission, units["kube-apiserver"]],
        ready=APISERVER_READY, _serial=True,
        guard=only_if_peers_healthy(APISERVER_READY, apiservers_ready(
            [str(m.ip) for m in ctx.cluster.masters if m != ctx.node]), "kube-apiserver"),
        name="control plane | kube-apiserver restarted on change, one master at a time",
    )
    command_when(
        wait_until(APISERVER_READY, "kube-apiserver", on_failure=f"{KUBECTL} get --raw '/readyz?verbose'"),
        when=[apiserver, restarted], name="control plane | kube-apiserver ready (after any restart)",
    )
    for unit in host.loop(("kube-controller-manager", "kube-scheduler")):
        service_running(unit, snap, name=f"control plane | {unit} running")
        # Leader election hands over while the other masters' instances run.
        service_restarted_in_turn(unit, snap, restart_on=[binaries, certs, kubeconfigs, units[unit]],
                                  # still running after 10 s (a refused flag exits at once, and
                                  # systemd retries it every 5 s): the next master may go
                                  ready=f"sleep 10 && systemctl is-active --quiet {unit}",
                                  _serial=True, name=f"control plane | {unit} restarted on change, in turn")
