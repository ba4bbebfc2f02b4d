# Runs ON a host (python3 only, stdlib only), sent by kthw.health in one SSH command, as root.
# argv[1]: JSON spec of what this node is asked (kthw/health.py probe_spec): every path, URL and
# command comes from the operator machine, none is spelled here. Prints one JSON object: the
# answers, raw (kubectl's and etcdctl's JSON as they printed it), for kthw/health.py to judge.
# Read-only. Each section answers {"error": ...} on its own failure, so one broken part never
# hides the others. Nothing secret is read: no private key, no kubeconfig credentials (the
# certificate read is kthw/hostcerts.py's, which never sends a key line; of the etcd snapshot folder
# only the names are listed, no file in it is opened).
import hashlib
import json
import os
import random
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request


def tail(text, n=300):
    text = (text or "").strip()
    return text[-n:]


def run(args, timeout=30, shell=False):
    """(returncode, stdout, stderr) of a command; a command that cannot run gives 127."""
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, shell=shell)
        return res.returncode, res.stdout, res.stderr
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, "", str(exc)


def json_of(args, timeout=30, shell=False):
    code, out, err = run(args, timeout, shell)
    if code != 0:
        return {"error": tail(err or out) or "exit code %d" % code}
    try:
        return json.loads(out)
    except ValueError:
        return {"error": "not JSON: " + tail(out, 200)}


def identity(path):
    """sha256 of the CA file this node holds (the operator compares it with its own PKI)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def services(units):
    """{unit: [ActiveState, SubState, UnitFileState]} of the units installed here, of systemd's
    full names (etcd.service, kthw-etcd-snapshot.timer), a service named without its .service."""
    code, out, err = run(["systemctl", "show", "-p", "Id,LoadState,ActiveState,SubState,UnitFileState", "--"]
                         + list(units))
    if code != 0:
        return {"error": tail(err) or "systemctl failed"}
    found = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("LoadState") == "loaded":
            unit = props["Id"]
            if unit.endswith(".service"):
                unit = unit[:-len(".service")]
            found[unit] = [props.get("ActiveState", ""), props.get("SubState", ""), props.get("UnitFileState", "")]
    return found


def folder_names(path):
    """The names in a folder, sorted; none when it is not there. Which of them make a whole
    snapshot is for kthw/snapshots.py to say, on the operator machine."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError as exc:
        return {"error": str(exc) or exc.__class__.__name__}


def readyz(url, cafile):
    """An apiserver's /readyz, anonymous (allowed for health endpoints), its CA verified."""
    try:
        ctx = ssl.create_default_context(cafile=cafile)
        with urllib.request.urlopen(url, timeout=5, context=ctx) as res:
            return {"status": res.status, "body": tail(res.read().decode(errors="replace"), 1000)}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": tail(exc.read().decode(errors="replace"), 1000)}
    except (OSError, ValueError, ssl.SSLError) as exc:
        return {"error": str(getattr(exc, "reason", "") or exc) or exc.__class__.__name__}


def weave(url):
    """The local Weave Net router's report: its Router section (connections with their state)."""
    try:
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as res:
            router = json.loads(res.read().decode()).get("Router") or {}
        return {"Name": router.get("Name", ""), "NickName": router.get("NickName", ""),
                "Connections": router.get("Connections") or []}
    except (OSError, ValueError) as exc:
        return {"error": str(getattr(exc, "reason", "") or exc) or exc.__class__.__name__}


def routes():
    """Routes through another host: [[destination, via]]."""
    code, out, err = run(["ip", "-4", "-o", "route", "show"])
    if code != 0:
        return {"error": tail(err) or "ip route failed"}
    found = []
    for line in out.splitlines():
        words = line.split()
        if "via" in words and words[0] != "default":
            found.append([words[0], words[words.index("via") + 1]])
    return found


# --- a DNS question over UDP (nodes have no dig; python3 is on every node)
def dns_question(qid, name):
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # recursion desired, one question
    for label in name.rstrip(".").split("."):
        packet += bytes([len(label)]) + label.encode()
    return packet + b"\0" + struct.pack(">HH", 1, 1)  # type A, class IN


def skip_name(data, pos):
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:  # a pointer ends the name
            return pos + 2
        pos += 1 + length


def dns_answer(data, qid):
    """{"rcode": n, "answers": [A records]} of a reply to question ``qid``."""
    rid, flags, qd, an = struct.unpack(">HHHH", data[:8])
    if rid != qid or not flags & 0x8000:
        raise ValueError("not the reply to our question")
    pos = 12
    for _ in range(qd):
        pos = skip_name(data, pos) + 4
    answers = []
    for _ in range(an):
        pos = skip_name(data, pos)
        rtype, _cls, _ttl, length = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            answers.append(".".join(str(b) for b in data[pos:pos + 4]))
        pos += length
    return {"rcode": flags & 0xF, "answers": answers}


def dns(arg):
    """Ask the cluster DNS for a name (twice at most); the answer or the last error."""
    server, name, port = arg["server"], arg["name"], arg.get("port", 53)
    last = ""
    for _ in range(2):
        qid = random.randint(0, 0xFFFF)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(arg.get("timeout", 2.0))
        try:
            sock.sendto(dns_question(qid, name), (server, port))
            while True:
                data, _ = sock.recvfrom(4096)
                try:
                    return dns_answer(data, qid)
                except (ValueError, struct.error, IndexError):
                    continue  # not ours, or garbled: wait for ours until the timeout
        except OSError as exc:
            last = str(exc) or exc.__class__.__name__
        finally:
            sock.close()
    return {"error": last}


def main(spec):
    out = {}
    if spec.get("kubectl"):
        k = spec["kubectl"]
        out["cluster"] = json_of([k["binary"], "--kubeconfig", k["kubeconfig"], "-n", "kube-system", "get",
                                  k["resources"], "-o", "json", "--request-timeout=5s"])
    out["time"] = time.time()  # just after the cluster was read: the leases are judged by this clock
    if spec.get("identity"):
        out["identity"] = identity(spec["identity"])
    if spec.get("services"):
        out["services"] = services(spec["services"])
    if spec.get("etcd"):
        etcdctl = spec["etcd"]
        out["etcd_status"] = json_of(etcdctl + " endpoint status -w json", shell=True)
        out["etcd_alarms"] = json_of(etcdctl + " alarm list -w json", shell=True)
    if spec.get("snapshots"):
        out["snapshots"] = folder_names(spec["snapshots"])
    if spec.get("readyz"):
        out["readyz"] = dict((url, readyz(url, spec["cafile"])) for url in spec["readyz"])
    if spec.get("weave"):
        out["weave"] = weave(spec["weave"])
    if spec.get("routes"):
        out["routes"] = routes()
    if spec.get("dns"):
        out["dns"] = dns(spec["dns"])
    if spec.get("certs"):
        code, text, err = run(spec["certs"], timeout=60, shell=True)
        out["certs"] = text if code == 0 else {"error": tail(err) or "exit code %d" % code}
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
