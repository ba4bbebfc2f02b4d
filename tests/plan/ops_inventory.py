"""One @fake host for deploy files that use kthw's operations directly (examples/own_deploy.py,
tests/plan/unnamed_ops.py). Its snapshot reports a fresh machine: every path asked for absent.
KTHW_TEST_SECRET is the secret those deploys upload, so a test can look for it in the output."""

import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

_fresh = {"files": {p: None for p in ("/etc/myapp/config.ini", "/etc/myapp/token", "/etc/kthw-test/secret.key")},
          "dirs": {"/etc/myapp": None, "/etc/kthw-test": None},
          "services": {"myapp": ["inactive", ""], "kthw-test": ["active", "enabled"]}}

hosts = [("@fake/node", {
    "myapp_token": os.environ.get("KTHW_TEST_SECRET", "not-set"),
    "fake_delay": 0, "fake_delay_jitter": 0,
    # The HostState snapshot is the only command whose output matters.
    "fake_responses": {re.compile(r"^(sudo .*)?python3 -c .*host_state|hash_cache"): json.dumps(_fresh)},
})]
