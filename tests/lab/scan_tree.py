# Runs ON a lab node (python3, stdlib), as root: every file, directory and symlink under the
# given roots with what identifies its state. argv[1]: JSON {"roots": [...], "skip": [...]}.
# Prints one JSON object {path: [kind, sha256 or link target, mode, "uid:gid", mtime_ns]}.
import hashlib
import json
import os
import stat
import sys

req = json.loads(sys.argv[1])
skip = tuple(req.get("skip", []))
out = {}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


for root in req["roots"]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.join(dirpath, d).startswith(skip)]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if path.startswith(skip):
                continue
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    kind, what = "file", sha256(path)
                elif stat.S_ISLNK(st.st_mode):
                    kind, what = "link", os.readlink(path)
                elif stat.S_ISDIR(st.st_mode):
                    kind, what = "dir", ""
                else:
                    kind, what = "other", ""
            except OSError:  # gone while we looked (a running service's file)
                continue
            out[path] = [kind, what, st.st_mode & 0o7777, f"{st.st_uid}:{st.st_gid}", st.st_mtime_ns]
print(json.dumps(out))
