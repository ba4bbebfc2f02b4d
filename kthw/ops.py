"""Our own pyinfra operations, driven by one :class:`~kthw.facts.HostState` snapshot.

pyinfra's stock ``files.put``/``files.template`` ask the host 2-3 questions per file, twice
per run; with ~40 managed files per host that is the whole cost of a no-op rerun. These
operations compare against the snapshot taken once per host instead, so a converged host
costs one remote command. They also never print a secret: ``--diff`` shows text diffs of
ordinary files only, and "(secret, content not shown)" for keys, kubeconfigs and the
encryption config.

Each operation is small and does one thing, like pyinfra's own::

    files_synced([ManagedFile.text("/etc/hosts", text)], snapshot, name="hosts file")
    service_running("etcd", snapshot, restart_on=[unit_op, certs_op], reload_on=[unit_op])
"""

from __future__ import annotations

import difflib
import hashlib
import posixpath
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import FileContents

# Uploads land here (relative to the SSH user's home, mode 0700) before `cp` moves them into
# place with sudo: pyinfra's default temp dir is /tmp, where a key would sit world-readable.
UPLOAD_DIR = ".kthw-upload"


@dataclass(frozen=True)
class ManagedFile:
    """A file the deploy owns: its content (bytes, or a local path for big binaries)."""

    dest: str
    sha256: str
    data: bytes | None = None
    local: Path | None = None
    mode: int = 0o644
    owner: str = "root:root"
    secret: bool = False

    @classmethod
    def text(cls, dest: str, text: str, mode: int = 0o644, secret: bool = False) -> ManagedFile:
        return cls.content(dest, text.encode(), mode=mode, secret=secret)

    @classmethod
    def content(cls, dest: str, data: bytes, mode: int = 0o644, secret: bool = False) -> ManagedFile:
        return cls(dest, hashlib.sha256(data).hexdigest(), data=data, mode=mode, secret=secret)

    @classmethod
    def binary(cls, dest: str, local: Path, sha256: str, mode: int = 0o755) -> ManagedFile:
        return cls(dest, sha256, local=local, mode=mode)

    def source(self):
        return BytesIO(self.data) if self.data is not None else str(self.local)


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int = 0o755
    owner: str = "root:root"


@dataclass
class Snapshot:
    """The host's state as HostState reported it, with small accessors."""

    raw: dict
    spec: dict = field(default_factory=dict)

    def file(self, path: str) -> tuple[str, int, str] | None:
        found = self.raw["files"].get(path)
        return tuple(found) if found else None

    def directory(self, path: str) -> tuple[int, str] | None:
        found = self.raw["dirs"].get(path)
        return tuple(found) if found else None

    def service(self, unit: str) -> tuple[str, str]:
        return tuple(self.raw["services"].get(unit, ("inactive", "")))

    def sysctl(self, key: str) -> str | None:
        return self.raw["sysctls"].get(key)

    def package(self, name: str) -> bool:
        return bool(self.raw["packages"].get(name))

    def __getitem__(self, key):
        return self.raw[key]


def _changed(ops: Iterable[OperationMeta]) -> bool:
    """Did (at execute time) / will (at plan time) any of these operations change the host?"""
    ops = [op for op in ops if op is not None]
    if state.is_executing:
        return any(op.did_change() for op in ops)
    return any(op.will_change for op in ops)


def _print_diff(f: ManagedFile, exists: bool) -> None:
    """Show what a --diff run would change; secrets are named, never shown."""
    if not state.config.DIFF or state.is_executing and state.should_check_for_changes():
        return  # printed once, at plan time
    verb = "modify" if exists else "create"
    if f.secret:
        host.log(f"Will {verb} {f.dest} (secret, content not shown)", logger.info)
        return
    if f.data is None:
        host.log(f"Will {verb} {f.dest} (binary, sha256 {f.sha256[:12]}…)", logger.info)
        return
    try:
        new = f.data.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        host.log(f"Will {verb} {f.dest} (binary)", logger.info)
        return
    old = []
    if exists:
        old = [line + "\n" for line in (host.get_fact(FileContents, path=f.dest) or [])]
    host.log(f"Will {verb} {f.dest}", logger.info)
    for line in difflib.unified_diff(old, new, f.dest, f.dest, n=2):
        logger.info("    %s", line.rstrip("\n"))


@operation()
def directories_present(dirs: Sequence[Directory], snapshot: Snapshot):
    """Create directories and fix their mode/owner, all in one command.

    + dirs: the directories (parents first)
    + snapshot: the host's HostState
    """
    cmds = []
    for d in dirs:
        current = snapshot.directory(d.path)
        if current is None:
            cmds.append(f"install -d -m {d.mode:o} -o {d.owner.split(':')[0]} -g {d.owner.split(':')[1]} "
                        f"{shlex.quote(d.path)}")
            continue
        if current[0] != d.mode:
            cmds.append(f"chmod {d.mode:o} {shlex.quote(d.path)}")
        if current[1] != d.owner:
            cmds.append(f"chown {d.owner} {shlex.quote(d.path)}")
    if cmds:
        yield " && ".join(cmds)


@operation()
def files_synced(files: Sequence[ManagedFile], snapshot: Snapshot, check: str = ""):
    """Make each file's content, mode and owner match; upload only what differs.

    A new version lands beside the old one (``<dest>.kthw-new``, created 0600), gets its mode
    and owner, passes ``check`` if given, then replaces the old one with a rename: a running
    binary is never written over ("Text file busy"), a secret is never readable on the way,
    and a config that fails its check never takes the place of a working one.

    + files: what the host must hold
    + snapshot: the host's HostState (must list every dest under "files")
    + check: command run on the new file before it replaces the old, ``{path}`` is its path
    """
    uploaded_dir = False
    for f in files:
        current = snapshot.file(f.dest)
        quoted = shlex.quote(f.dest)
        if current is None or current[0] != f.sha256:
            _print_diff(f, current is not None)
            if not uploaded_dir:
                yield StringCommand(f"mkdir -p -m 700 {UPLOAD_DIR}", _sudo=False)
                uploaded_dir = True
            new = shlex.quote(f.dest + ".kthw-new")
            yield f"rm -f {new} && install -m 600 /dev/null {new}"  # `cp` keeps this mode
            temp = posixpath.join(UPLOAD_DIR, hashlib.sha1(f.dest.encode()).hexdigest())
            yield FileUploadCommand(f.source(), f.dest + ".kthw-new", remote_temp_filename=temp)
            place = f"chmod {f.mode:o} {new} && chown {f.owner} {new}"
            if check:
                place += f" && {{ {check.format(path=new)} || {{ rm -f {new}; exit 1; }}; }}"
            yield f"{place} && mv -f {new} {quoted}"
            continue
        if current[1] != f.mode:
            yield f"chmod {f.mode:o} {quoted}"
        if current[2] != f.owner:
            yield f"chown {f.owner} {quoted}"


@operation()
def service_running(unit: str, snapshot: Snapshot, restart_on: Sequence[OperationMeta] = (),
                    reload_on: Sequence[OperationMeta] = (), graceful: bool = False):
    """Enable and start a systemd service; restart it only when its inputs changed.

    + unit: service name without ``.service``
    + restart_on: operations whose change (binary, unit, config, certificates) needs a restart
    + reload_on: operations that changed unit files (a daemon-reload first)
    + graceful: ``reload-or-restart`` instead of ``restart`` (HAProxy keeps its connections)
    """
    active, enabled = snapshot.service(unit)
    cmds = []
    if _changed(reload_on):
        cmds.append("systemctl daemon-reload")
    if enabled != "enabled":
        cmds.append(f"systemctl enable {unit}")
    if _changed(restart_on):
        cmds.append(f"systemctl {'reload-or-restart' if graceful else 'restart'} {unit}")
    elif active != "active":
        cmds.append(f"systemctl start {unit}")
    if cmds:
        yield " && ".join(cmds)


@operation()
def service_restarted_in_turn(unit: str, snapshot: Snapshot, restart_on: Sequence[OperationMeta],
                              ready: str = ""):
    """Restart a service that was already running when its inputs changed, then wait until it
    is ready. Call it with ``_serial=True``: hosts take turns, so a replicated service (etcd,
    the apiservers) never goes down everywhere at once. A service that was not running is
    left to :func:`service_running` (etcd members must first start together).

    + unit: service name without ``.service``
    + restart_on: operations whose change needs a restart
    + ready: shell condition that holds once the service serves again
    """
    active, _ = snapshot.service(unit)
    if active == "active" and _changed(restart_on):
        cmd = f"systemctl restart {unit}"
        if ready:
            cmd += f" && for i in $(seq 90); do {ready} && exit 0; sleep 2; done; echo '{unit} not ready' >&2; exit 1"
        yield cmd


@operation()
def command_when(command: str, when: Sequence[OperationMeta] = (), always: bool = False):
    """Run ``command`` only if any of ``when`` changed (or ``always``): a wait, an apply...

    + command: the shell command
    + when: the operations whose change calls for it
    """
    if always or _changed(when):
        yield command
