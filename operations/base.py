"""Every node: name, /etc/hosts, no swap, kernel prerequisites, the Debian packages every
component of the node asks for (one apt-get, before anything needs them).

Operations, in order: hostname → hosts file → swap off → kernel modules → sysctls →
packages.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from kthw import components
from kthw.context import HostContext, Wants
from kthw.ops import ManagedFile, Snapshot, files_synced
from kthw.paths import FSTAB, HOSTNAME, HOSTS, MODULES_CONF, SYSCTL_CONF

COMPONENT = components.BASE

MODULES = ("overlay", "br_netfilter")
# Kubernetes nodes route pod traffic and let bridged traffic through iptables (kube-proxy).
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}


def wants(ctx: HostContext) -> Wants:
    w = Wants()
    w.files["hostname"] = [ManagedFile.text(HOSTNAME, f"{ctx.node.name}\n")]
    w.files["hosts file"] = [ctx.template_file(HOSTS)]
    if not ctx.is_loadbalancer:
        w.files["kernel prerequisites"] = [
            ManagedFile.text(MODULES_CONF,
                             "# Managed by kthw-pyinfra.\n" + "\n".join(MODULES) + "\n"),
            ManagedFile.text(SYSCTL_CONF, "# Managed by kthw-pyinfra.\n"
                             + "".join(f"{k} = {v}\n" for k, v in SYSCTLS.items())),
        ]
        w.sysctls = dict(SYSCTLS)
    return w


@operation()
def hostname_set(name: str, snapshot: Snapshot):
    """Set the running hostname (the file is managed with the other files).

    + name: the node name
    """
    if snapshot["hostname"] == name:
        host.noop(f"hostname is already {name}")
        return
    yield f"hostname {shlex.quote(name)}"


@operation()
def swap_off(snapshot: Snapshot):
    """Turn swap off now and on every boot: the kubelet refuses to run with it."""
    if not snapshot["swap"] and not snapshot["fstab_swap"]:
        host.noop(f"no swap in use or in {FSTAB}")
    if snapshot["swap"]:
        yield "swapoff -a"
    if snapshot["fstab_swap"]:
        yield (r"sed -i -E '/^[^#[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]]/ "
               rf"s/^/# disabled by kthw-pyinfra: /' {FSTAB}")


@operation()
def kernel_modules_loaded(modules: tuple[str, ...], snapshot: Snapshot):
    """Load modules the kernel lacks; built-in ones (or containers, which cannot load any)
    are fine as long as the feature is there.

    + modules: module names
    """
    present = {"overlay": snapshot["overlay"], "br_netfilter": snapshot["br_netfilter"]}
    missing = [m for m in modules if not present.get(m, False)]
    if not missing:
        host.noop(f"{', '.join(modules)} present")
    else:
        names = " ".join(missing)
        # A container cannot load modules; say so and go on (the next step tells whether
        # the feature is really missing).
        yield f"modprobe -a {names} || echo 'kthw: cannot load {names} here; continuing' >&2"


@operation()
def sysctls_applied(values: dict[str, str], snapshot: Snapshot):
    """Apply sysctls whose live value differs (the file persists them).

    + values: key -> wanted value
    """
    wrong = [k for k, v in values.items() if snapshot.sysctl(k) != v]
    if not wrong:
        host.noop(f"{len(values)} sysctls already set")
    else:
        yield " && ".join(f"sysctl -w {k}={values[k]}" for k in wrong)


@operation()
def packages_installed(packages: list[str], snapshot: Snapshot):
    """apt-get install what is missing (and refresh the index only then).

    + packages: Debian package names
    """
    missing = [p for p in packages if not snapshot.package(p)]
    if not missing:
        host.noop(f"packages {', '.join(packages)} are installed")
    else:
        yield ("export DEBIAN_FRONTEND=noninteractive && apt-get update -qq && "
               "apt-get install -y -qq --no-install-recommends " + " ".join(missing))


def deploy(ctx: HostContext, w: Wants, packages: list[str]) -> None:
    """``packages``: every component's Debian packages (their Wants), installed at once."""
    snap = ctx.snapshot
    files_synced(w.files["hostname"], snap, name="base | hostname file")
    hostname_set(ctx.node.name, snap, name="base | hostname")
    files_synced(w.files["hosts file"], snap, name="base | /etc/hosts lists every node")
    swap_off(snap, name="base | swap off")
    if not ctx.is_loadbalancer:
        files_synced(w.files["kernel prerequisites"], snap,
                     name="base | kernel modules and sysctls persisted")
        kernel_modules_loaded(MODULES, snap, name="base | kernel modules present")
        sysctls_applied(SYSCTLS, snap, name="base | sysctls applied")
    packages_installed(sorted(set(packages)), snap, name="base | packages")
