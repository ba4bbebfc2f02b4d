# Runs ON a host (python3 only, stdlib only), sent by kthw.facts.HostState in one SSH command.
# argv[1]: JSON spec: sections {files, dirs, services, sysctls, packages, manifests, images,
# versions, applied}, the paths it needs (hash_cache, applied_dir) and named questions
# {questions: {name: argument}}, all sent by the operator (kthw/facts.py, operations/plan.py).
# Prints one JSON object.
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
CACHE = spec["hash_cache"]
try:
    with open(CACHE) as fh:
        cache = json.load(fh)
except Exception:
    cache = {}


def unit_name(unit):
    """A bare name is a service; a name with its type (a .timer) stays (kthw.paths.unit_name)."""
    return unit if "." in unit else unit + ".service"


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
                         + [unit_name(u) for u in units], capture_output=True, text=True)
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
        out["applied"][key] = os.stat(os.path.join(spec["applied_dir"], key)).st_mtime
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
kubectl = spec.get("kubectl")  # {"binary", "kubeconfig"} on a master that applies manifests
for manifest in spec.get("manifests", []):
    if not (kubectl and os.path.exists(manifest)):
        out["manifests"][manifest] = "missing"
        continue
    res = subprocess.run([kubectl["binary"], "--kubeconfig", kubectl["kubeconfig"], "get", "-f", manifest,
                          "-o", "name", "--request-timeout=5s"], capture_output=True, text=True)
    out["manifests"][manifest] = "present" if res.returncode == 0 else "missing"
# ------------------------------------------------------------------- questions, by name
# What the components ask besides the sections above: spec["questions"] maps a name to its
# argument (the paths, commands and marks it needs, sent by the operator machine, never spelled
# here). Each answer lands in out[name]. A component declares its questions in Wants.queries.
QUESTIONS = {}


def question(fn):
    QUESTIONS[fn.__name__] = fn
    return fn


def kubectl_out(arg, *args):
    """kubectl's stdout on this master (arg: {"binary", "kubeconfig"}), or None."""
    if not os.path.exists(arg["binary"]):
        return None
    res = subprocess.run([arg["binary"], "--kubeconfig", arg["kubeconfig"], *args, "--request-timeout=5s"],
                         capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


def weave_env(arg, name):
    out_ = kubectl_out(arg, "-n", "kube-system", "get", "daemonset", "weave-net", "--ignore-not-found", "-o",
                       'jsonpath={.spec.template.spec.containers[0].env[?(@.name=="%s")].value}' % name)
    return (out_ or "").strip()


@question
def weave_range(arg):
    """The pod range a running Weave Net was started with (its IPAM state depends on it)."""
    return weave_env(arg, "IPALLOC_RANGE")


@question
def weave_init(arg):
    """The IPALLOC_INIT a running Weave Net was started with: kept, so a node added or removed does
    not roll every weave-net pod (the value only matters when the IPAM ring is first made)."""
    return weave_env(arg, "IPALLOC_INIT")


_nodes = []


def nodes(arg):
    """The Node objects, read once for the three questions below."""
    if not _nodes:
        text = kubectl_out(arg, "get", "nodes", "-o", "json")
        _nodes.append(json.loads(text).get("items", []) if text else [])
    return _nodes[0]


@question
def node_names(arg):
    """Every Node's name (one gone from the cluster file is drained and deleted)."""
    return [item["metadata"]["name"] for item in nodes(arg)]


@question
def control_plane_labelled(arg):
    """The Nodes that carry the control-plane role label (masters get it from the add-ons)."""
    return [i["metadata"]["name"] for i in nodes(arg) if arg["role_label"] in i["metadata"].get("labels", {})]


@question
def node_status(arg):
    """What each kubelet reports (versions, Ready, cordoned, the deploy's drain mark)."""
    found = {}
    for item in nodes(arg):
        meta, status = item["metadata"], item.get("status", {})
        info = status.get("nodeInfo", {})
        found[meta["name"]] = {
            "kubelet": info.get("kubeletVersion", ""), "runtime": info.get("containerRuntimeVersion", ""),
            "ready": any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])),
            "unschedulable": bool(item.get("spec", {}).get("unschedulable")),
            "drained": arg["drain_mark"] in meta.get("annotations", {}),
        }
    return found


@question
def pod_routes(arg):
    """Routes to pod subnets through another node (bridge CNI): one to a node no longer in the
    cluster is removed."""
    res = subprocess.run(["ip", "-4", "-o", "route", "show"], capture_output=True, text=True)
    if res.returncode != 0:
        return []
    return [line.split()[0] for line in res.stdout.splitlines() if " via " in line and not line.startswith("default")]


@question
def etcd_data(arg):
    """Whether this master's etcd holds data (a master without is new, or joins a running cluster)."""
    return os.path.isdir(arg["member_dir"])


@question
def etcd_members(arg):
    """The etcd cluster's members, as this master's etcd lists them: [[hex id, name, peer URLs, client URLs]]."""
    res = subprocess.run(["sh", "-c", arg["etcdctl"] + " member list -w json"], capture_output=True, text=True)
    if res.returncode != 0:
        return []
    return [[format(m["ID"], "x"), m.get("name", ""), m.get("peerURLs", []), m.get("clientURLs", [])]
            for m in json.loads(res.stdout).get("members", [])]


@question
def etcd_status(arg):
    """This member's database: its size on disk, the part in use (the rest is free pages a
    defragmentation gives back) and its alarms (NOSPACE, CORRUPT); None when etcd does not answer."""
    names = {1: "NOSPACE", 2: "CORRUPT"}

    def ask(what):
        res = subprocess.run(["sh", "-c", arg["etcdctl"] + " --dial-timeout=2s --command-timeout=5s " + what
                              + " -w json"], capture_output=True, text=True)
        return json.loads(res.stdout) if res.returncode == 0 else None
    status = ask("endpoint status")
    alarms = ask("alarm list")
    if not status or alarms is None:
        return None
    st = status[0]["Status"]
    me = st.get("header", {}).get("member_id")
    return {"db_size": st.get("dbSize", 0), "in_use": st.get("dbSizeInUse", 0),
            "alarms": sorted(names.get(a.get("alarm"), str(a.get("alarm"))) for a in alarms.get("alarms", [])
                             if a.get("memberID") == me)}


@question
def weave_targets(arg):
    """The addresses this node's Weave Net router keeps connecting to (a node gone from the
    cluster is forgotten, or the router retries it for ever)."""
    import urllib.request
    try:
        with urllib.request.urlopen(arg["url"], timeout=5) as res:
            return [t.rsplit(":", 1)[0] for t in res.read().decode().split()]
    except (OSError, ValueError):
        return []


@question
def managed_registry_hosts(arg):
    """Registries whose containerd hosts.toml the deploy wrote (its first line marks it), so one no
    longer configured can be removed; hand-made ones are left alone."""
    found = []
    certs_d = arg["certs_d"]
    for name in sorted(os.listdir(certs_d)) if os.path.isdir(certs_d) else []:
        try:
            with open(os.path.join(certs_d, name, "hosts.toml")) as fh:
                if fh.readline().startswith(arg["mark"]):
                    found.append(name)
        except OSError:
            pass
    return found


@question
def units_left(arg):
    """Of these units (ones no component of this host runs any more), those still active or
    enabled: a former deploy's, to stop."""
    res = subprocess.run(["systemctl", "show", "-p", "Id,ActiveState,UnitFileState", *[unit_name(u) for u in arg]],
                         capture_output=True, text=True)
    found = []
    for block in res.stdout.strip().split("\n\n") if res.returncode == 0 else []:
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("ActiveState") == "active" or props.get("UnitFileState") == "enabled":
            found.append(props.get("Id", "").removesuffix(".service"))
    return found


@question
def interface_of(arg):
    """The network interface that holds this address (keepalived puts the virtual IP beside it)."""
    res = subprocess.run(["ip", "-4", "-o", "addr", "show", "to", arg], capture_output=True, text=True)
    fields = res.stdout.split() if res.returncode == 0 else []
    return fields[1] if len(fields) > 1 else ""


@question
def sealed_with(arg):
    """During a key rotation, on the first master: etcd's encrypted values counted by the key
    that sealed them ({"key2": 41, "key1": 3}; None if etcd did not answer). arg: the script
    kthw/remote/sealed_with.py and its argument, sent by the operator."""
    res = subprocess.run(["python3", "-c", arg["script"], json.dumps(arg["arg"])], capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 else None


@question
def text_of(arg):
    """Small text files the deploy compares with what it would write ({path: text or None}),
    e.g. the record of the nodes' pod subnets on a master."""
    found = {}
    for path in arg:
        try:
            with open(path) as fh:
                found[path] = fh.read()
        except OSError:
            found[path] = None
    return found


for name, arg in sorted(spec.get("questions", {}).items()):
    out[name] = QUESTIONS[name](arg)

refs = spec.get("images", [])
out["images"] = []
if refs and os.path.exists("/run/containerd/containerd.sock"):
    res = subprocess.run(["ctr", "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True)
    if res.returncode == 0:
        out["images"] = [r for r in refs if r in res.stdout.split()]
print(json.dumps(out))
