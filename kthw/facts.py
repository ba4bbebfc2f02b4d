"""Custom pyinfra facts.

``HostState`` is what the deploy reads: everything about a host it manages, in ONE remote
command, so a no-op rerun costs one round trip per host. The others are for people, ad hoc::

    pyinfra inventory.py fact kthw.facts.CertificateExpiry
    pyinfra inventory.py fact kthw.facts.EtcdHealth --limit masters
    pyinfra inventory.py fact kthw.facts.KthwServices
    pyinfra inventory.py fact kthw.facts.EtcdSnapshots --limit masters
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from pyinfra.api import FactBase

from kthw import components, paths
from kthw.commands import ETCDCTL
from kthw.paths import ETCD_DIR, HASH_CACHE, K8S_PKI, KUBELET_PKI

_REMOTE = Path(__file__).parent / "remote"
_HOST_STATE_SCRIPT = (_REMOTE / "host_state.py").read_text()
# Sent by kthw.ops.files_synced with the files it placed: the only writer of the hash cache.
RECORD_HASHES_SCRIPT = (_REMOTE / "record_hashes.py").read_text()
# Where the deploy puts certificates; CertificateExpiry looks at all of them.
CERT_DIRS = (K8S_PKI, ETCD_DIR, KUBELET_PKI)


class HostState(FactBase):
    """Hashes, modes and owners of managed files, directory modes, service states, sysctls,
    packages, swap and kernel features, in one command (runs ``python3`` on the host). It only
    reads: big files are hashed unless the hash cache (written when the deploy placed them)
    vouches for them by size, mtime and inode.

    Example::

        state = host.get_fact(HostState, spec={"files": ["/etc/hosts"], "services": ["etcd"]})
        state["files"]["/etc/hosts"]      # [sha256, mode, "owner:group"] or None
        state["services"]["etcd"]         # [ActiveState, UnitFileState]

    Named questions (``kthw/remote/host_state.py`` QUESTIONS) take their argument from the spec::

        host.get_fact(HostState, spec={"questions": {"etcd_data": {"member_dir": "/var/lib/etcd/member"}}})
    """

    def command(self, spec: dict) -> str:
        spec = {"hash_cache": HASH_CACHE, "applied_dir": paths.APPLIED_DIR, **spec}
        return f"python3 -c {shlex.quote(_HOST_STATE_SCRIPT)} {shlex.quote(json.dumps(spec, sort_keys=True))}"

    def process(self, output: list[str]) -> dict:
        return json.loads("\n".join(output))


class CertificateExpiry(FactBase):
    """Subject and expiry of every certificate the deploy placed on the host.

    Example: ``{"/var/lib/kubernetes/pki/kube-apiserver.crt": {"subject": "CN=kube-apiserver",
    "not_after": "Nov 25 12:00:00 2027 GMT"}}``
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "openssl"

    def command(self) -> str:
        dirs = " ".join(CERT_DIRS)
        return (
            f"for f in $(find {dirs} -maxdepth 1 -name '*.crt' 2>/dev/null | sort); do "
            'printf "%s|%s|%s\\n" "$f" '
            '"$(openssl x509 -noout -subject -nameopt RFC2253 -in "$f" | sed "s/^subject=//")" '
            '"$(openssl x509 -noout -enddate -in "$f" | sed "s/^notAfter=//")"; done'
        )

    def process(self, output: list[str]) -> dict:
        out = {}
        for line in output:
            path, subject, not_after = (line.split("|", 2) + ["", ""])[:3]
            out[path] = {"subject": subject.strip(), "not_after": not_after.strip()}
        return out

    @staticmethod
    def default() -> dict:
        return {}


class EtcdHealth(FactBase):
    """etcd members and the health of each endpoint, asked over TLS on a master.

    Example: ``{"members": [{"name": "master-1", "peer": "https://192.168.56.11:2380"}],
    "health": {"https://192.168.56.11:2379": true}}``
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "etcdctl"

    def command(self) -> str:
        return (
            f"{ETCDCTL} member list -w json; echo '---'; "
            f"{ETCDCTL} endpoint health --cluster -w json 2>/dev/null || true"
        )

    def process(self, output: list[str]) -> dict:
        text = "\n".join(output)
        members_text, _, health_text = text.partition("---")
        members = []
        try:
            for m in json.loads(members_text).get("members", []):
                members.append({"name": m.get("name", ""), "peer": ",".join(m.get("peerURLs", [])),
                                "client": ",".join(m.get("clientURLs", []))})
        except ValueError:
            pass
        health = {}
        try:
            for h in json.loads(health_text or "[]"):
                health[h.get("endpoint", "?")] = bool(h.get("health"))
        except ValueError:
            pass
        return {"members": members, "health": health}

    @staticmethod
    def default() -> dict:
        return {"members": [], "health": {}}


class EtcdSnapshots(FactBase):
    """The scheduled etcd snapshots a master holds (operations/snapshots.py), oldest first: the
    names ``backup.py --data scheduled=NAME`` and ``restore.py --data snapshot=MASTER:NAME`` take.

    Example: ``[{"name": "etcd-20261207T060000Z.db", "bytes": 4206624}]``
    """

    def command(self) -> str:
        from kthw.snapshots import NAME_SHELL

        return (f"if cd {paths.ETCD_SNAPSHOTS} 2>/dev/null; then ls | grep -E '{NAME_SHELL}' | "
                "sort | while read -r n; do echo \"$n $(stat -c %s \"$n\")\"; done; fi")

    def process(self, output: list[str]) -> list[dict]:
        return [{"name": name, "bytes": int(size)} for name, size in (line.split() for line in output if line.strip())]

    @staticmethod
    def default() -> list:
        return []


# Every service a component runs (kthw/components.py), ours and the packages' (HAProxy, keepalived).
KTHW_UNITS = components.all_units()


class KthwServices(FactBase):
    """State of this project's systemd services on the host (only those installed).

    Example: ``{"etcd": {"active": "active", "enabled": "enabled", "since": "Wed 2026-11-25 ..."}}``
    """

    def command(self) -> str:
        units = " ".join(paths.unit_name(u) for u in KTHW_UNITS)
        return (f"systemctl show --property=Id,LoadState,ActiveState,UnitFileState,"
                f"ActiveEnterTimestamp -- {units}")

    def process(self, output: list[str]) -> dict:
        out, props = {}, {}
        for line in [*output, ""]:
            if line.strip():
                key, _, value = line.partition("=")
                props[key] = value
                continue
            if props.get("LoadState") == "loaded":
                out[props["Id"].removesuffix(".service")] = {
                    "active": props.get("ActiveState", ""), "enabled": props.get("UnitFileState", ""),
                    "since": props.get("ActiveEnterTimestamp", ""),
                }
            props = {}
        return out
