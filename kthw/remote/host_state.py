# Runs ON a host (python3 only, stdlib only), sent by kthw.facts.HostState in one SSH command.
# argv[1]: JSON spec {files, dirs, services, sysctls, packages, manifests}. Prints one JSON object.
# Read-only: it changes nothing on the host (a fact, and so a --dry run, must not). The hash
# cache it reads is written by the real run, in the command that places a file
# (kthw/remote/record_hashes.py).
import datetime
import hashlib
import json
import os
import subprocess
import sys

spec = json.loads(sys.argv[1])
CACHE = spec.get("hash_cache", "/var/lib/kthw/hash-cache.json")
try:
    with open(CACHE) as fh:
        cache = json.load(fh)
except Exception:
    cache = {}


def owner(st):
    import grp
    import pwd
    try:
        u = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        u = str(st.st_uid)
    try:
        g = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        g = str(st.st_gid)
    return u + ":" + g


def digest(path, st):
    # Big binaries are hashed when placed; afterwards (size, mtime, inode) vouch for the hash.
    key = [st.st_size, st.st_mtime_ns, st.st_ino]
    hit = cache.get(path)
    if hit and hit[:3] == key:
        return hit[3]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


out = {"files": {}, "dirs": {}, "services": {}, "sysctls": {}, "packages": {}, "manifests": {},
       "mtimes": {}, "started": {}, "need_reload": {}, "applied": {}}
for path in spec.get("files", []):
    try:
        st = os.stat(path)
        out["files"][path] = [digest(path, st), st.st_mode & 0o7777, owner(st)]
        out["mtimes"][path] = st.st_mtime
    except OSError:
        out["files"][path] = None
# The version a binary about to be replaced runs, asked (`--version`) only when its content
# differs from the wanted one: the deploy checks the version-skew policy before any change.
out["versions"] = {}
for path, want in (spec.get("versions") or {}).items():
    have = out["files"].get(path)
    if have and have[0] != want:
        try:
            res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            out["versions"][path] = res.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out["versions"][path] = ""
for path in spec.get("dirs", []):
    try:
        st = os.stat(path)
        out["dirs"][path] = [st.st_mode & 0o7777, owner(st)] if os.path.isdir(path) else None
    except OSError:
        out["dirs"][path] = None
units = spec.get("services", [])
if units:
    # When each main process started, in wall-clock time with microseconds (to compare with
    # its inputs' mtimes).
    res = subprocess.run(["systemctl", "show", "--timestamp=us+utc", "--property=Id,ActiveState,UnitFileState,"
                          "NeedDaemonReload,ExecMainStartTimestamp", "--"]
                         + [u + ".service" for u in units], capture_output=True, text=True)
    blocks = [b for b in res.stdout.strip().split("\n\n")]
    for unit, block in zip(units, blocks):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        out["services"][unit] = [props.get("ActiveState", "unknown"), props.get("UnitFileState", "")]
        out["need_reload"][unit] = props.get("NeedDaemonReload") == "yes"
        try:  # "Fri 2026-11-27 10:00:00.123456 UTC" (the weekday's name may be localized: skipped)
            stamp = props.get("ExecMainStartTimestamp", "").partition(" ")[2]
            when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f UTC")
            out["started"][unit] = when.replace(tzinfo=datetime.timezone.utc).timestamp()
        except ValueError:  # never started (empty)
            out["started"][unit] = 0
# When the deploy last restarted, reloaded or applied something (see kthw.ops.APPLIED_DIR).
for key in spec.get("applied", []):
    try:
        out["applied"][key] = os.stat(os.path.join(spec.get("applied_dir", "/var/lib/kthw/applied"), key)).st_mtime
    except OSError:
        out["applied"][key] = 0
for key in spec.get("sysctls", []):
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as fh:
            out["sysctls"][key] = fh.read().strip()
    except OSError:
        out["sysctls"][key] = None
pkgs = spec.get("packages", [])
if pkgs:
    res = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n"] + pkgs,
                         capture_output=True, text=True)
    installed = {l.split()[0] for l in res.stdout.splitlines() if l.split()[1:2] == ["ii"]}
    out["packages"] = {p: p in installed for p in pkgs}
with open("/proc/swaps") as fh:
    out["swap"] = [l.split()[0] for l in fh.read().splitlines()[1:] if l.strip()]
try:
    with open("/etc/fstab") as fh:
        out["fstab_swap"] = [l for l in fh.read().splitlines()
                             if not l.lstrip().startswith("#") and l.split()[2:3] == ["swap"]]
except OSError:
    out["fstab_swap"] = []
with open("/proc/filesystems") as fh:
    out["overlay"] = "overlay" in fh.read()
out["br_netfilter"] = os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables")
out["hostname"] = os.uname().nodename
try:
    with open("/etc/hostname") as fh:
        out["etc_hostname"] = fh.read().strip()
except OSError:
    out["etc_hostname"] = ""
# cgroup v2 mounts cgroup2 at /sys/fs/cgroup; v1 and hybrid mount a tmpfs there.
# CAP_SYS_RESOURCE (bit 24) lets root lower oom_score_adj, which runc does for every pod
# sandbox (-998); some sandboxes (containers, restricted VMs) do not have it.
with open("/proc/self/status") as fh:
    caps = [l.split()[1] for l in fh if l.startswith("CapEff:")]
out["sys_resource"] = bool(caps) and bool(int(caps[0], 16) >> 24 & 1)
out["resolved"] = os.path.exists("/run/systemd/resolve/resolv.conf")
out["cgroup"] = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"
try:
    with open("/run/systemd/container") as fh:
        out["container"] = fh.read().strip()
except OSError:
    out["container"] = ""
kubectl = spec.get("kubectl")
for manifest in spec.get("manifests", []):
    if not (kubectl and os.path.exists(manifest)):
        out["manifests"][manifest] = "missing"
        continue
    res = subprocess.run([kubectl["binary"], "--kubeconfig", kubectl["kubeconfig"], "get", "-f", manifest,
                          "-o", "name", "--request-timeout=5s"], capture_output=True, text=True)
    out["manifests"][manifest] = "present" if res.returncode == 0 else "missing"
# The pod range a running Weave Net was started with (its IPAM state depends on it).
out["weave_range"] = ""
if spec.get("weave_range") and kubectl and os.path.exists(kubectl["binary"]):
    res = subprocess.run([kubectl["binary"], "--kubeconfig", kubectl["kubeconfig"], "-n", "kube-system", "get",
                          "daemonset", "weave-net", "--ignore-not-found", "--request-timeout=5s", "-o",
                          'jsonpath={.spec.template.spec.containers[0].env[?(@.name=="IPALLOC_RANGE")].value}'],
                         capture_output=True, text=True)
    out["weave_range"] = res.stdout.strip() if res.returncode == 0 else ""
# The IPALLOC_INIT a running Weave Net was started with: kept, so a node added or removed does
# not roll every weave-net pod (the value only matters when the IPAM ring is first made).
out["weave_init"] = ""
if spec.get("weave_init") and kubectl and os.path.exists(kubectl["binary"]):
    res = subprocess.run([kubectl["binary"], "--kubeconfig", kubectl["kubeconfig"], "-n", "kube-system", "get",
                          "daemonset", "weave-net", "--ignore-not-found", "--request-timeout=5s", "-o",
                          'jsonpath={.spec.template.spec.containers[0].env[?(@.name=="IPALLOC_INIT")].value}'],
                         capture_output=True, text=True)
    out["weave_init"] = res.stdout.strip() if res.returncode == 0 else ""
# The Node objects, read once: every name (a node gone from the cluster file is drained and
# deleted), which carry the control-plane role label (masters get it from the addons), and what
# each kubelet reports (versions, Ready, cordoned, the deploy's drain mark) for rolling upgrades.
out["node_names"], out["control_plane_labelled"], out["node_status"] = [], [], {}
if ((spec.get("node_names") or spec.get("control_plane_labelled") or spec.get("node_status"))
        and kubectl and os.path.exists(kubectl["binary"])):
    res = subprocess.run([kubectl["binary"], "--kubeconfig", kubectl["kubeconfig"], "get", "nodes", "-o", "json",
                          "--request-timeout=5s"], capture_output=True, text=True)
    for item in json.loads(res.stdout).get("items", []) if res.returncode == 0 else []:
        meta, status = item["metadata"], item.get("status", {})
        name = meta["name"]
        out["node_names"].append(name)
        if "node-role.kubernetes.io/control-plane" in meta.get("labels", {}):
            out["control_plane_labelled"].append(name)
        info = status.get("nodeInfo", {})
        out["node_status"][name] = {
            "kubelet": info.get("kubeletVersion", ""), "runtime": info.get("containerRuntimeVersion", ""),
            "ready": any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])),
            "unschedulable": bool(item.get("spec", {}).get("unschedulable")),
            "drained": "kthw.io/drained-for-upgrade" in meta.get("annotations", {}),
        }
# Routes to pod subnets through another node (bridge CNI): one to a node no longer in the
# cluster is removed.
out["pod_routes"] = []
if spec.get("pod_routes"):
    res = subprocess.run(["ip", "-4", "-o", "route", "show"], capture_output=True, text=True)
    if res.returncode == 0:
        out["pod_routes"] = [line.split()[0] for line in res.stdout.splitlines() if " via " in line
                             and not line.startswith("default")]
# Whether this master's etcd holds data (a master without is new, or joins a running cluster).
out["etcd_data"] = os.path.isdir("/var/lib/etcd/member") if spec.get("etcd_data") else False
# The etcd cluster's members, as this master's etcd lists them: [[hex id, name, peer URLs, client URLs]].
out["etcd_members"] = []
if spec.get("etcd_members") and spec.get("etcdctl"):
    res = subprocess.run(["sh", "-c", spec["etcdctl"] + " member list -w json"], capture_output=True, text=True)
    if res.returncode == 0:
        out["etcd_members"] = [[format(m["ID"], "x"), m.get("name", ""), m.get("peerURLs", []), m.get("clientURLs", [])]
                               for m in json.loads(res.stdout).get("members", [])]
# The addresses this node's Weave Net router keeps connecting to (a node gone from the cluster
# is forgotten, or the router retries it for ever).
out["weave_targets"] = []
if spec.get("weave_targets"):
    try:
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:6784/status/targets", timeout=5) as res:
            out["weave_targets"] = [t.rsplit(":", 1)[0] for t in res.read().decode().split()]
    except (OSError, ValueError):
        pass
# Registries whose containerd hosts.toml the deploy wrote (its first line marks it), so one no
# longer configured can be removed; hand-made ones are left alone.
out["managed_registry_hosts"] = []
if spec.get("managed_registry_hosts"):
    certs_d = "/etc/containerd/certs.d"
    for name in sorted(os.listdir(certs_d)) if os.path.isdir(certs_d) else []:
        try:
            with open(os.path.join(certs_d, name, "hosts.toml")) as fh:
                if fh.readline().startswith("# Managed by kthw-pyinfra"):
                    out["managed_registry_hosts"].append(name)
        except OSError:
            pass
refs = spec.get("images", [])
out["images"] = []
if refs and os.path.exists("/run/containerd/containerd.sock"):
    res = subprocess.run(["ctr", "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True)
    if res.returncode == 0:
        out["images"] = [r for r in refs if r in res.stdout.split()]
print(json.dumps(out))
