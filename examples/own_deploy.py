"""Using this project's operations and facts in your own deploy file.

    pyinfra my_inventory.py examples/own_deploy.py --dry --diff

Take ONE snapshot of everything the deploy manages on the host (one remote command), then let
each operation compare against it. The operations print every change under ``--diff``, never a
secret's content, and restart a service only when what it depends on changed. Run from the
repository root (or put it on PYTHONPATH) so ``kthw`` imports.
"""

from pyinfra import host

from kthw.facts import HostState
from kthw.ops import Directory, ManagedFile, Snapshot, directories_present, placed, service_running

# What the host must hold. A secret is uploaded 0600 and only ever named in output.
token = host.data.get("myapp_token", "change-me")
dirs = [Directory("/etc/myapp", 0o700)]
config = [ManagedFile.text("/etc/myapp/config.ini", "[server]\nport = 8080\n")]
secrets = [ManagedFile.text("/etc/myapp/token", token, mode=0o600, secret=True)]

# The snapshot must be asked for every path, unit and sysctl the operations look up; asking an
# operation about anything else is an error that names it.
spec = {"files": [f.dest for f in config + secrets], "dirs": [d.path for d in dirs], "services": ["myapp"]}
snap = Snapshot(host.get_fact(HostState, spec=spec), spec)

directories_present(dirs, snap, name="myapp | directory")
changed_config = placed(config, snap, name="myapp | config")
# Without name=, pyinfra labels the operation with its arguments: files show as their path and
# digest, never their bytes.
changed_token = placed(secrets, snap)
service_running("myapp", snap, restart_on=[changed_config, changed_token], name="myapp | running")
