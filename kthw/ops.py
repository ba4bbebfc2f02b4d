"""Our own pyinfra operations, driven by one :class:`~kthw.facts.HostState` snapshot.

pyinfra's stock ``files.put``/``files.template`` ask the host 2-3 questions per file, twice
per run; with ~40 managed files per host that is the whole cost of a no-op rerun. These
operations compare against the snapshot taken once per host instead, so a converged host
costs one remote command. They also never print a secret: ``--diff`` shows every changed file
of an operation (text diffs of ordinary files, mode and owner changes the way ``files.put``
shows them) and only "(secret, content not shown)" for keys, kubeconfigs and the encryption
config.

Each operation is small and does one thing, like pyinfra's own::

    snap = Snapshot(host.get_fact(HostState, spec=spec), spec)
    unit = placed([ManagedFile.text("/etc/systemd/system/etcd.service", text)], snap, name="etcd unit")
    service_running("etcd", snap, restart_on=[unit, certs], reload_on=[unit])

Safe in anyone's deploy: a path, unit or sysctl the snapshot was not asked for is an error that
names it (never "absent"); no argument's repr carries file contents, so an operation called
without ``name=`` cannot print a key in its label; uploads honour ``_temp_dir``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.api.util import format_text
from pyinfra.facts.files import FileContents
from pyinfra.operations.util.files import generate_color_diff

from kthw import packing
from kthw.commands import wait_until
from kthw.facts import RECORD_HASHES_SCRIPT
from kthw.paths import APPLIED_DIR, HASH_CACHE, UPLOAD_DIR

# Uploads land in UPLOAD_DIR (mode 0700, in the SSH user's home unless ``_temp_dir`` says
# where), sent as the SSH user, before one root command copies them into place: pyinfra's own
# sudo upload goes through /tmp, where a key would sit world-readable. Each operation that
# uploads empties it first (what a failed step left goes with the next upload, and with
# reset.py) and removes it once everything is in place.
# APPLIED_DIR: one empty file per service or add-on, touched in the same command that restarted,
# reloaded or applied it: an input placed later (its mtime) means that step is still owed, even
# if the run that placed it was interrupted before getting there (HostState reports both times).


def dests(*groups: Sequence[ManagedFile]) -> list[str]:
    """The paths of these managed files."""
    return [f.dest for g in groups for f in g]


@dataclass(frozen=True)
class Placed:
    """What one :func:`files_synced` placed: its operation (did it change the files?) and their
    paths. A service restarted on it derives both from this one object: the restart when the
    operation changes something, and the restart an interrupted run owes when a file was placed
    after the service last started (:meth:`Snapshot.pending`)."""

    op: OperationMeta
    dests: tuple[str, ...]

    def __repr__(self) -> str:  # an unnamed operation's label: paths, never contents
        return f"Placed({', '.join(self.dests[:3])}{', ...' if len(self.dests) > 3 else ''})"


def placed(files: Sequence[ManagedFile], snapshot: Snapshot, **kwargs) -> Placed:
    """:func:`files_synced` (same arguments), remembered with the paths it manages."""
    return Placed(files_synced(files, snapshot, **kwargs), tuple(f.dest for f in files))


def _ops(items: Iterable[Placed | OperationMeta]) -> list[OperationMeta]:
    return [i.op if isinstance(i, Placed) else i for i in items]


def _inputs(items: Iterable[Placed | OperationMeta]) -> list[str]:
    return [d for i in items if isinstance(i, Placed) for d in i.dests]


def mark_applied(key: str) -> str:
    """The shell command that records ``key`` (a unit, ``addon-<file>``) as applied now."""
    return f"mkdir -p {APPLIED_DIR} && touch {APPLIED_DIR}/{shlex.quote(key)}"


class SnapshotError(KeyError):
    """An operation looked up something the host snapshot was not asked for."""

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class ManagedFile:
    """A file the deploy owns: its content (bytes, or a local path for big binaries).

    Its repr names the file and its digest, never its bytes: pyinfra prints the arguments of
    an operation called without ``name=``.
    """

    dest: str
    sha256: str
    data: bytes | None = field(default=None, repr=False)
    local: Path | None = None
    # where a local file's zstd copy is kept: it is sent compressed (kthw.packing); None sends it as it is
    zstd_cache: Path | None = None
    mode: int = 0o644
    owner: str = "root:root"
    secret: bool = False
    identity: bool = False  # part of the cluster's identity (kthw.pki.IDENTITY_FILES)
    # other digests a host may hold for an identity file and still be this cluster (a CA
    # rotation's states: kthw.pki.known_trust; a key rotation's: kthw.cluster_secrets.known_configs)
    accepted: frozenset[str] = field(default=frozenset(), repr=False)

    @classmethod
    def text(cls, dest: str, text: str, mode: int = 0o644, secret: bool = False) -> ManagedFile:
        return cls.content(dest, text.encode(), mode=mode, secret=secret)

    @classmethod
    def content(cls, dest: str, data: bytes, mode: int = 0o644, secret: bool = False,
                accepted: frozenset[str] = frozenset()) -> ManagedFile:
        """``accepted``: for an identity file, the other digests a host of this cluster may hold."""
        return cls(dest, hashlib.sha256(data).hexdigest(), data=data, mode=mode, secret=secret,
                   identity=bool(accepted), accepted=accepted)

    @classmethod
    def binary(cls, dest: str, local: Path, sha256: str, mode: int = 0o755,
               zstd_cache: Path | None = None) -> ManagedFile:
        """A big local file (a binary, an image archive); ``zstd_cache``: send it compressed."""
        return cls(dest, sha256, local=local, mode=mode, zstd_cache=zstd_cache)

    def transfer(self) -> tuple[BytesIO | str, str]:
        """What to upload, and the host's command that turns the upload back into the file."""
        if self.data is not None:
            return BytesIO(self.data), "cat"
        if self.zstd_cache is not None:
            return str(packing.zstd_copy(self.local, self.sha256, self.zstd_cache)), packing.UNPACK
        return str(self.local), "cat"

    def __repr__(self) -> str:
        kind = "secret" if self.secret else "binary" if self.data is None else "text"
        return f"ManagedFile({self.dest}, {kind}, sha256={self.sha256[:12]}, mode={self.mode:o})"

    __str__ = __repr__


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int = 0o755
    owner: str = "root:root"


@dataclass
class Snapshot:
    """The host's state as HostState reported it, with strict accessors.

    Asking for a path, unit, sysctl or package that ``spec`` did not list raises
    :class:`SnapshotError`: silently treating it as absent would plan changes on a host that
    already matches.
    """

    raw: dict
    spec: dict = field(default_factory=dict)

    def _lookup(self, section: str, key: str):
        found = self.raw.get(section, {})
        if key not in found:
            raise SnapshotError(
                f"{key!r} is not in this host's snapshot ({section}). Fix: list it under "
                f"{section!r} in the HostState spec the snapshot was taken with."
            )
        return found[key]

    def file(self, path: str) -> tuple[str, int, str] | None:
        """(sha256, mode, "owner:group") or None when the file does not exist."""
        found = self._lookup("files", path)
        return tuple(found) if found else None

    def directory(self, path: str) -> tuple[int, str] | None:
        found = self._lookup("dirs", path)
        return tuple(found) if found else None

    def service(self, unit: str) -> tuple[str, str]:
        """(ActiveState, UnitFileState)."""
        return tuple(self._lookup("services", unit))

    def pending(self, key: str, inputs: Sequence[str]) -> bool:
        """Was any of ``inputs`` (paths in the snapshot) placed after ``key`` (a service, an
        add-on) was last restarted or applied? Then a run placed it and stopped before the
        restart or apply it calls for, and this run owes it."""
        for path in inputs:
            self._lookup("files", path)  # asked for, or an error that says so
        mtimes = self.raw.get("mtimes", {})
        newest = max((mtimes.get(p) or 0 for p in inputs), default=0)
        done = max(self.raw.get("applied", {}).get(key) or 0, self.raw.get("started", {}).get(key) or 0)
        return newest > done

    def needs_daemon_reload(self, unit: str) -> bool:
        """systemd's own NeedDaemonReload: its unit file changed since the last daemon-reload."""
        return bool(self.raw.get("need_reload", {}).get(unit))

    def sysctl(self, key: str) -> str | None:
        return self._lookup("sysctls", key)

    def package(self, name: str) -> bool:
        return bool(self._lookup("packages", name))

    def manifest_present(self, path: str) -> bool:
        return self._lookup("manifests", path) == "present"

    def image_present(self, ref: str) -> bool:
        if ref not in self.spec.get("images", []):
            raise SnapshotError(f"{ref!r} is not in this host's snapshot (images). Fix: list it "
                                "under 'images' in the HostState spec.")
        return ref in self.raw.get("images", [])

    def query(self, name: str):
        """The answer to a named question (``Wants.queries``), e.g. "control_plane_labelled"."""
        if name not in self.spec.get("questions", {}):
            raise SnapshotError(f"{name!r} was not asked in this host's snapshot. Fix: add it to the "
                                "component's Wants.queries.")
        return self.raw.get(name)

    def __getitem__(self, key):
        return self.raw[key]

    def __repr__(self) -> str:
        return f"Snapshot({len(self.raw.get('files', {}))} files, {len(self.raw.get('services', {}))} services)"


def _changed(ops: Iterable[Placed | OperationMeta]) -> bool:
    """Did (at execute time) / will (at plan time) any of these operations change the host?"""
    ops = [op for op in _ops(ops) if op is not None]
    if state.is_executing:
        return any(op.did_change() for op in ops)
    return any(op.will_change for op in ops)


def _show_diffs() -> bool:
    """--diff output is printed once, at plan time (pyinfra evaluates operations again to run
    them; printing there too would show every change twice)."""
    return bool(state.config.DIFF) and not (state.is_executing and state.should_check_for_changes())


@dataclass(frozen=True)
class _FileChange:
    file: ManagedFile
    current: tuple[str, int, str] | None  # (sha256, mode, owner) on the host, None if absent

    @property
    def content(self) -> bool:
        return self.current is None or self.current[0] != self.file.sha256

    @property
    def mode(self) -> bool:
        return self.current is not None and self.current[1] != self.file.mode

    @property
    def owner(self) -> bool:
        return self.current is not None and self.current[2] != self.file.owner


def _change_lines(change: _FileChange) -> tuple[str, list[str]]:
    """One file's part of --diff: (header, lines). Content as a diff (secrets named, never shown),
    then mode and owner the way pyinfra's files.put prints them. Asks the host for the current
    content of an ordinary text file (FileContents), so call it before printing anything."""
    f, dest = change.file, format_text(change.file.dest, bold=True)
    if not change.content:
        lines = []
        if change.mode:
            lines += [f"  mode {format_text(f'{change.current[1]:o}', 'red')}",
                      f"  mode {format_text(f'{f.mode:o}', 'green')}"]
        if change.owner:
            lines += [f"  chown {format_text(change.current[2], 'red')}",
                      f"  chown {format_text(f.owner, 'green')}"]
        return f"Will change {dest}", lines
    header = f"Will {'modify' if change.current else 'create'} {dest}"
    if f.secret:
        return header, ["  (secret, content not shown)"]
    if f.data is None:
        was = f", was {change.current[0][:12]}…" if change.current else ""
        return header, [f"  (binary, sha256 {f.sha256[:12]}…{was})"]
    try:
        new = f.data.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return header, [f"  (binary, sha256 {f.sha256[:12]}…)"]
    old = [line + "\n" for line in (host.get_fact(FileContents, path=f.dest) or [])] if change.current else []
    return header, ["  " + line for line in generate_color_diff(old, new)]


def _print_changes(changes: list[_FileChange]) -> None:
    """Print every change of an operation. The host is asked everything first: asking yields to
    the other hosts' greenlets, whose output would otherwise land inside this host's diff."""
    parts = [_change_lines(c) for c in changes]
    for header, lines in parts:
        host.log(header, logger.info)
        for line in lines:
            logger.info("%s", line)
        logger.info("")


def _upload_dir() -> str:
    """Our private upload folder: under ``_temp_dir`` when the caller gave one, else in the
    SSH user's home (never straight into a shared /tmp)."""
    args = host.current_op_global_arguments or {}
    base = args.get("_temp_dir")
    return posixpath.join(base, UPLOAD_DIR) if base else UPLOAD_DIR


@operation()
def directories_present(dirs: Sequence[Directory], snapshot: Snapshot):
    """Create directories and fix their mode/owner, all in one command.

    + dirs: the directories (parents first)
    + snapshot: the host's HostState

    Example::

        directories_present([Directory("/etc/etcd", 0o700)], snap, name="etcd | directories")
    """
    cmds = []
    for d in dirs:
        current = snapshot.directory(d.path)
        user, group = d.owner.split(":")
        if current is None:
            cmds.append(f"install -d -m {d.mode:o} -o {user} -g {group} {shlex.quote(d.path)}")
            continue
        if current[0] != d.mode:
            cmds.append(f"chmod {d.mode:o} {shlex.quote(d.path)}")
        if current[1] != d.owner:
            cmds.append(f"chown {d.owner} {shlex.quote(d.path)}")
    if not cmds:
        host.noop(f"{len(dirs)} director{'y' if len(dirs) == 1 else 'ies'} already in place")
        return
    yield " && ".join(cmds)


@operation()
def files_synced(files: Sequence[ManagedFile], snapshot: Snapshot, check: str = ""):
    """Make each file's content, mode and owner match; upload only what differs.

    Every change is worked out (and, with ``--diff``, printed) before the first command: pyinfra
    plans an operation by running it only up to its first command, so anything printed later
    would be missing from ``--dry --diff``.

    A new version lands beside the old one (``<dest>.kthw-new``, created 0600), gets its mode
    and owner, passes ``check`` if given, then replaces the old one with a rename: a running
    binary is never written over ("Text file busy"), a secret is never readable on the way,
    and a config that fails its check never takes the place of a working one. The same command
    hashes what landed, fails if it is not what was sent, and records the hash in the host's
    hash cache (so the next snapshot need not read big binaries again).

    + files: what the host must hold
    + snapshot: the host's HostState (must list every dest under "files")
    + check: command run on the new file before it replaces the old, ``{path}`` is its path

    Example::

        files_synced([ManagedFile.text("/etc/haproxy/haproxy.cfg", cfg)], snap,
                     check="haproxy -c -q -f {path}", name="apiserver proxy | haproxy.cfg")
    """
    changes = [c for c in (_FileChange(f, snapshot.file(f.dest)) for f in files)
               if c.content or c.mode or c.owner]
    if not changes:
        host.noop(f"{len(files)} file(s) already in place: "
                  + ", ".join(f.dest for f in files[:3]) + (", ..." if len(files) > 3 else ""))
        return
    if _show_diffs():
        _print_changes(changes)
    uploads = [c.file for c in changes if c.content]
    # every command is built before the first is yielded (see above)
    commands = [*_upload_commands(uploads, check), *_attribute_commands(changes)]
    yield from commands


# No privilege change of any kind (sudo, su, doas, dzdo) for the upload folder and the uploads
# into it: pyinfra's escalated upload would go through /tmp.
AS_SSH_USER = {"_sudo": False, "_su_user": None, "_doas": False, "_dzdo": False}


def _upload_commands(uploads: list[ManagedFile], check: str) -> list:
    """:func:`files_synced`'s commands for new content, two however many files, and one SFTP
    put per file: a fresh private upload folder (the SSH user's own, 0700), every new version
    sent into it over SFTP as that user, then one command as root that puts each in place
    (:func:`_swap_command`) and removes the folder."""
    if not uploads:
        return []
    temp_dir = _upload_dir()
    q_temp = shlex.quote(temp_dir)
    staged = {f.dest: posixpath.join(temp_dir, hashlib.sha1(f.dest.encode()).hexdigest()) for f in uploads}
    sent = {f.dest: f.transfer() for f in uploads}  # (upload, how the host unpacks it)
    return [
        StringCommand(f"rm -rf {q_temp} && mkdir -m 700 {q_temp} && test -O {q_temp} -a ! -L {q_temp}",
                      **AS_SSH_USER),
        *(FileUploadCommand(sent[f.dest][0], staged[f.dest], **AS_SSH_USER) for f in uploads),
        f"{_swap_command(uploads, staged, {d: how for d, (_, how) in sent.items()}, check)} && rm -rf {q_temp}",
    ]


def _swap_command(uploads: list[ManagedFile], staged: dict[str, str], unpack: dict[str, str], check: str) -> str:
    """One command: each new version created 0600 beside its dest before any byte is written in
    (a secret is never readable on the way) by its ``unpack`` command (``cat``, or zstd for a
    compressed upload), given its mode and owner, passed through ``check``, then renamed over the
    old one (a running binary is never written over); then what landed is hashed, compared and
    recorded in the host's hash cache."""
    steps = []
    for f in uploads:
        new, dest = shlex.quote(f.dest + ".kthw-new"), shlex.quote(f.dest)
        step = (f"rm -f {new} && install -m 600 /dev/null {new} "
                f"&& {unpack[f.dest]} {shlex.quote(staged[f.dest])} > {new} "
                f"&& chmod {f.mode:o} {new} && chown {f.owner} {new}")
        if check:
            step += f" && {{ {check.format(path=new)} || {{ rm -f {new}; exit 1; }}; }}"
        steps.append(f"{step} && mv -f {new} {dest}")
    record = json.dumps({"cache": HASH_CACHE, "files": {f.dest: f.sha256 for f in uploads}})
    steps.append(f"python3 -c {shlex.quote(RECORD_HASHES_SCRIPT)} {shlex.quote(record)}")
    return " && ".join(steps)


def _attribute_commands(changes: list[_FileChange]) -> list[str]:
    """chmod / chown for the files whose content is right but whose mode or owner is not."""
    cmds = []
    for c in changes:
        if not c.content and c.mode:
            cmds.append(f"chmod {c.file.mode:o} {shlex.quote(c.file.dest)}")
        if not c.content and c.owner:
            cmds.append(f"chown {c.file.owner} {shlex.quote(c.file.dest)}")
    return cmds


@operation()
def service_running(unit: str, snapshot: Snapshot, restart_on: Sequence[Placed] = (),
                    reload_on: Sequence[Placed | OperationMeta] = (), graceful: bool = False):
    """Enable and start a systemd service; restart it only when its inputs changed.

    + unit: service name without ``.service``
    + restart_on: what was placed (:func:`placed`) whose change needs a restart (binary, unit,
      config, certificates); a file of it placed after the service last (re)started means a run
      was interrupted before this restart, which is then owed (see :meth:`Snapshot.pending`)
    + reload_on: operations that changed unit files (a daemon-reload first; likewise a unit file
      systemd has not reloaded)
    + graceful: ``reload-or-restart`` instead of ``restart`` (HAProxy keeps its connections)

    Example::

        binaries = placed(w.files["kubernetes binaries"], snap, name="kubelet binary")
        service_running("kubelet", snap, restart_on=[binaries, config, unit], reload_on=[unit])
    """
    active, enabled = snapshot.service(unit)
    cmds = []
    if _changed(reload_on) or snapshot.needs_daemon_reload(unit):
        cmds.append("systemctl daemon-reload")
    if enabled != "enabled":
        cmds.append(f"systemctl enable {unit}")
    if _changed(restart_on) or (active == "active" and snapshot.pending(unit, _inputs(restart_on))):
        cmds.append(f"systemctl {'reload-or-restart' if graceful else 'restart'} {unit}")
        cmds.append(mark_applied(unit))
    elif active != "active":
        cmds.append(f"systemctl start {unit}")
        cmds.append(mark_applied(unit))
    if not cmds:
        host.noop(f"service {unit} is enabled and running, and nothing it depends on changed")
        return
    yield " && ".join(cmds)


@operation()
def service_restarted_in_turn(unit: str, snapshot: Snapshot, restart_on: Sequence[Placed],
                              ready: str = "", guard: str = ""):
    """Restart a service that was already running when its inputs changed, then wait until it
    is ready. Call it with ``_serial=True``: hosts take turns, so a replicated service (etcd,
    the apiservers) never goes down everywhere at once. A service that was not running is
    left to :func:`service_running` (etcd members must first start together).

    + unit: service name without ``.service``
    + restart_on: what was placed (:func:`placed`) whose change needs a restart (and, placed
      after the service last started, the restart an interrupted run owes)
    + ready: shell condition that holds once the service serves again
    + guard: shell commands run first that fail to refuse the restart (see
      :func:`kthw.commands.only_if_peers_healthy`): with ``ready``, a member that does not come
      back fails its turn, and the next member's guard then refuses, so at most one is down
    """
    active, _ = snapshot.service(unit)
    if active != "active" or not (_changed(restart_on) or snapshot.pending(unit, _inputs(restart_on))):
        host.noop(f"service {unit} needs no restart")
        return
    cmd = f"systemctl restart {unit}"
    if guard:
        cmd = f"{guard}; {cmd}"
    if ready:  # (the wait ends with `exit`: a subshell, so the marker follows it)
        cmd += f" && ({wait_until(ready, unit)})"
    yield f"{cmd} && {mark_applied(unit)}"


@operation()
def command_when(command: str, when: Sequence[OperationMeta] = (), always: bool = False):
    """Run ``command`` only if any of ``when`` changed (or ``always``): a wait, an apply...

    + command: the shell command
    + when: the operations whose change calls for it
    + always: run it anyway (the caller found another reason in the snapshot)
    """
    if not (always or _changed(when)):
        host.noop("not needed: nothing it follows changed")
        return
    yield command
