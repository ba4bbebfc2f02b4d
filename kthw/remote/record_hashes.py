# Runs ON a host (python3 only, stdlib only), sent by kthw.ops.files_synced in the same command
# that put new files in place. argv[1]: JSON {"cache": path, "files": {path: expected sha256}}.
# Hashes what landed, fails if it is not what was sent, and records (size, mtime, inode, sha256)
# so the next HostState snapshot (which only reads the cache) need not hash big binaries again.
import hashlib
import json
import os
import sys

req = json.loads(sys.argv[1])
cache_path = req["cache"]
try:
    with open(cache_path) as fh:
        cache = json.load(fh)
except Exception:
    cache = {}
bad = []
for path, want in req["files"].items():
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    st = os.stat(path)
    if h.hexdigest() != want:
        bad.append(path)
        cache.pop(path, None)
        continue
    cache[path] = [st.st_size, st.st_mtime_ns, st.st_ino, want]
os.makedirs(os.path.dirname(cache_path), mode=0o700, exist_ok=True)
tmp = cache_path + ".tmp"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as fh:
    json.dump(cache, fh)
os.replace(tmp, cache_path)
if bad:
    sys.exit("kthw: uploaded content differs from what was sent: " + ", ".join(bad))
