"""The real inventory's groups and data on pyinfra's @fake connector, for plan tests.

KTHW_FAKE_STATE picks what every host's HostState snapshot reports:
  fresh      a machine nothing has touched yet (default)
  converged  exactly what the deploy would leave behind (a rerun must change nothing)
  renewed    converged, but every master holds an older etcd and apiserver certificate
  drifted    converged, but some files differ in content, mode or owner (states.DRIFT)
  interrupted converged files, but a run placed some and stopped before the restarts and the
             apply they call for (states.INTERRUPTED)
KTHW_FAKE_WEAVE_RANGE: the pod range the running Weave Net reports (default: none running).
KTHW_FAKE_WEAVE_INIT: the IPALLOC_INIT the running Weave Net reports (default: none running).
KTHW_FAKE_NODE_NAMES: comma-separated Node objects the cluster reports (default: none).
KTHW_FAKE_POD_ROUTES: comma-separated routes through other nodes every node reports (default: none).
KTHW_FAKE_WEAVE_TARGETS: comma-separated addresses every node's Weave router connects to (default: none).
KTHW_FAKE_STATE_CLUSTER: the cluster file the state was converged for (default: the deployed
  one, KTHW_CLUSTER), to plan a change of cluster.yaml on a running cluster.
KTHW_FAKE_OTHER_IDENTITY: the masters hold another cluster's CA certificate and encryption config.
KTHW_FAKE_NODE_STATUS_DRAINED: comma-separated Nodes left cordoned by an interrupted upgrade.
KTHW_FAKE_RUNNING: what the binaries the deploy replaces report as their version, e.g.
  "kubernetes=Kubernetes v1.35.4,etcd=etcd Version: 3.6.16" (default: nothing asked).
KTHW_FAKE_POD_SUBNETS: "node=cidr,..." the masters' record of the pod subnets holds instead.
KTHW_FAKE_ENCRYPTION_CONFIG_SHA: the sha256 of the encryption config every master holds (an
  earlier step of a key rotation).
KTHW_FAKE_SEALED_WITH: "key=count,..." etcd's values by the key that sealed them, as the first
  master counts them during a key rotation (default: none asked).
KTHW_FAKE_ETCD_FREE_MIB: "node=MiB,..." free pages in those members' etcd database files.
KTHW_FAKE_ETCD_ALARMS: "node=ALARM,..." an alarm those etcd members raised (NOSPACE, CORRUPT).
KTHW_FAKE_REGISTRY_HOSTS: comma-separated registries whose deploy-written hosts.toml every
  Kubernetes node reports (default: as the state implies).
KTHW_FAKE_SCHEDULED: a folder laid out like a master's /var/lib/etcd-snapshots: every master answers
  kthw.snapshots.fetch_command from it (default: no scheduled snapshot there).
"""

import base64
import io
import json
import os
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kthw.inventory import groups  # noqa: E402
from kthw.model import load_cluster  # noqa: E402
from kthw.upgrade import VERSIONED  # noqa: E402
from tests.plan.states import converged_state, drifted_state, fresh_state, interrupted_state  # noqa: E402


def _scheduled_responses() -> dict:
    """What a master answers kthw.snapshots.fetch_command: the named snapshot's (or the newest's)
    name, then its four files as a base64 tar, as the real command prints them."""
    from kthw.paths import ETCD_SNAPSHOTS
    from kthw.snapshots import sidecars

    folder = os.environ.get("KTHW_FAKE_SCHEDULED")
    dbs = sorted(Path(folder).glob("etcd-*.db")) if folder else []
    missing = {"| base64": {"success": False, "stderr": f"{ETCD_SNAPSHOTS}: no such scheduled snapshot"}}
    if not dbs:
        return missing

    def answer(db: Path) -> list[str]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in sidecars(db.name):
                tar.add(db.parent / name, arcname=name)
        text = base64.b64encode(buf.getvalue()).decode()
        return [db.name, *(text[i:i + 76] for i in range(0, len(text), 76))]

    # a name the folder holds, else the newest when none is named, else a failure, as on a master
    return {**{f"n={db.name} ": answer(db) for db in dbs}, "n=$(ls ": answer(dbs[-1]), **missing}


_cluster = load_cluster()
_groups = groups(_cluster, {n.name: {} for n in _cluster.nodes}, prefix="@fake/")
_mode = os.environ.get("KTHW_FAKE_STATE", "fresh")
_was = load_cluster(os.environ["KTHW_FAKE_STATE_CLUSTER"]) if os.environ.get("KTHW_FAKE_STATE_CLUSTER") else _cluster

for _hosts in _groups.values():
    for _name, _data in _hosts:
        if _data["kthw_node"] not in {n.name for n in _was.nodes}:  # a node new in this model
            _node = _cluster.node(_data["kthw_node"])
            _state = fresh_state(_cluster, _node)
        elif _mode == "drifted":
            _node = _was.node(_data["kthw_node"])
            _state = drifted_state(_was, _node)
        elif _mode == "interrupted":
            _node = _was.node(_data["kthw_node"])
            _state = interrupted_state(_was, _node)
        elif _mode in ("converged", "renewed"):
            _node = _was.node(_data["kthw_node"])
            _state = converged_state(_was, _node)
        else:
            _node = _was.node(_data["kthw_node"])
            _state = fresh_state(_was, _node)
        if _was is not _cluster:  # what the new model asks about and the old state lacks: absent
            _new = fresh_state(_cluster, _cluster.node(_data["kthw_node"]))
            for _section in ("files", "dirs", "services", "sysctls", "packages", "manifests"):
                for _key, _value in _new[_section].items():
                    _state[_section].setdefault(_key, _value)
        # units the state runs (the real question narrows them to those asked about)
        _state["units_left"] = [_u for _u, (_active, _) in _state["services"].items() if _active == "active"]
        if _mode == "renewed" and _node.is_master:
            for _path in ("/etc/etcd/etcd-server.crt", "/var/lib/kubernetes/pki/kube-apiserver.crt"):
                _state["files"][_path][0] = "0" * 64
        if os.environ.get("KTHW_FAKE_OTHER_IDENTITY") and _node.is_master:
            for _path in ("/var/lib/kubernetes/pki/ca.crt", "/var/lib/kubernetes/encryption-config.yaml"):
                _state["files"][_path][0] = "1" * 64
        _state["weave_range"] = os.environ.get("KTHW_FAKE_WEAVE_RANGE", "")
        _state["weave_init"] = os.environ.get("KTHW_FAKE_WEAVE_INIT", "")
        _state["node_names"] = [n for n in os.environ.get("KTHW_FAKE_NODE_NAMES", "").split(",") if n]
        _state["pod_routes"] = [r for r in os.environ.get("KTHW_FAKE_POD_ROUTES", "").split(",") if r]
        _state["weave_targets"] = [t for t in os.environ.get("KTHW_FAKE_WEAVE_TARGETS", "").split(",") if t]
        _running = dict(kv.split("=", 1) for kv in os.environ.get("KTHW_FAKE_RUNNING", "").split(",") if kv)
        _state["versions"] = {p: _running[k] for p, k in VERSIONED.items()
                              if k in _running and _state["files"].get(p)}
        for _name in os.environ.get("KTHW_FAKE_NODE_STATUS_DRAINED", "").split(","):
            if _name in _state.get("node_status", {}):
                _state["node_status"][_name].update(drained=True, unschedulable=True)
        if "KTHW_FAKE_REGISTRY_HOSTS" in os.environ and _node.runs_kubelet:
            _state["managed_registry_hosts"] = [r for r in os.environ["KTHW_FAKE_REGISTRY_HOSTS"].split(",") if r]
        if os.environ.get("KTHW_FAKE_POD_SUBNETS") and _node.is_master:
            from kthw.model import pod_subnets, pod_subnets_text
            from kthw.paths import POD_SUBNETS_RECORD
            _held = dict(kv.split("=", 1) for kv in os.environ["KTHW_FAKE_POD_SUBNETS"].split(","))
            _held = {**pod_subnets(_was), **_held}
            _state["text_of"] = {POD_SUBNETS_RECORD: pod_subnets_text(_held)}
        if os.environ.get("KTHW_FAKE_ENCRYPTION_CONFIG_SHA") and _node.is_master:
            _held_sha = os.environ["KTHW_FAKE_ENCRYPTION_CONFIG_SHA"]
            _state["files"]["/var/lib/kubernetes/encryption-config.yaml"][0] = _held_sha
        if "KTHW_FAKE_SEALED_WITH" in os.environ:
            _state["sealed_with"] = {k: int(v) for k, v in (kv.split("=") for kv in
                                                            os.environ["KTHW_FAKE_SEALED_WITH"].split(",") if kv)}
        _free = dict(kv.split("=") for kv in os.environ.get("KTHW_FAKE_ETCD_FREE_MIB", "").split(",") if kv)
        _alarm = dict(kv.split("=") for kv in os.environ.get("KTHW_FAKE_ETCD_ALARMS", "").split(",") if kv)
        if _state.get("etcd_status") and _node.name in _free:
            _state["etcd_status"]["db_size"] = _state["etcd_status"]["in_use"] + (int(_free[_node.name]) << 20)
        if _state.get("etcd_status") and _node.name in _alarm:
            _state["etcd_status"]["alarms"] = [_alarm[_node.name]]
        _data["fake_delay"] = 0
        _data["fake_delay_jitter"] = 0
        _data["fake_responses"] = {**(_scheduled_responses() if _node.is_master else {}),
                                   "python3 -c": json.dumps(_state)}

loadbalancer = _groups["loadbalancer"]
masters = _groups["masters"]
workers = _groups["workers"]
