# Runs ON a master (python3 only, stdlib only), sent by kthw/key_rotation.py and asked by the
# deploy (kthw/remote/host_state.py's question sealed_with). Read-only.
# argv[1]: JSON {"etcdctl": the etcdctl command line with its TLS flags, "prefixes": the etcd
# key prefixes of the encrypted resources, e.g. ["/registry/secrets/"]}.
# Prints one JSON object: how many values under those prefixes each key seals
# ({"key2": 41, "key1": 3}); "(not encrypted)" counts values written before encryption was on
# (or by an identity provider). An encrypted value starts "k8s:enc:<provider>:v1:<key name>:".
# With "only": a key name, it exits 3 when any value is sealed otherwise (the rewrite's proof).
import base64
import json
import subprocess
import sys

spec = json.loads(sys.argv[1])
counts = {}
for prefix in spec["prefixes"]:
    res = subprocess.run(["sh", "-c", spec["etcdctl"] + " get --prefix -w json -- " + prefix],
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit("etcdctl get failed: " + res.stderr.strip()[-300:])
    for kv in json.loads(res.stdout).get("kvs", []):
        head = base64.b64decode(kv.get("value", ""))[:128]
        fields = head.split(b":")
        if head.startswith(b"k8s:enc:") and len(fields) > 5:
            name = fields[4].decode(errors="replace")
        else:
            name = "(not encrypted)"
        counts[name] = counts.get(name, 0) + 1
print(json.dumps(counts, sort_keys=True))
if spec.get("only") and any(n for name, n in counts.items() if name != spec["only"]):
    sys.exit(3)
