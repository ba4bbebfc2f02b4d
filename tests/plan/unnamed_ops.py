"""Every kthw operation called WITHOUT name= on a secret: pyinfra then labels each operation with
its arguments, so this proves no argument's repr carries key material. Uploads go through a
caller-chosen _temp_dir."""

from pyinfra import host

from kthw.facts import HostState
from kthw.ops import (
    Directory,
    ManagedFile,
    Snapshot,
    command_when,
    directories_present,
    placed,
    service_restarted_in_turn,
    service_running,
)

secret = ManagedFile.text("/etc/kthw-test/secret.key", host.data.myapp_token, mode=0o600, secret=True)
spec = {"files": [secret.dest], "dirs": ["/etc/kthw-test"], "services": ["kthw-test"]}
snap = Snapshot(host.get_fact(HostState, spec=spec), spec)

directories_present([Directory("/etc/kthw-test", 0o700)], snap)
uploaded = placed([secret], snap, _temp_dir="/var/tmp/kthw-test-uploads")
service_running("kthw-test", snap, restart_on=[uploaded], reload_on=[uploaded])
service_restarted_in_turn("kthw-test", snap, restart_on=[uploaded], ready="true")
command_when("true", when=[uploaded])
