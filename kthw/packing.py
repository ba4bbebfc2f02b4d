"""Big files travel zstd-compressed: every binary and image archive the deploy places is sent
to the host as a zstd frame and unpacked on the host as it is placed (:data:`UNPACK`, by
:func:`kthw.ops.files_synced`; the base component installs zstd on every host that receives
such a file: :meth:`kthw.context.Wants.all_packages`).

Why: an upload costs CPU per byte at both ends of the SSH connection (paramiko here; sshd and
sftp-server on the host), and a cold deploy sends about 2 GB of Go binaries. Measured in the
lab on 2026-12-07 (kube-apiserver, 89 MB, to a master; three runs): sent as it is, 0.54-0.69
CPU-s here and 0.45-0.56 on the host; zstd -3 leaves 27% of it, which cost 0.14-0.17 here,
0.21-0.22 there and 0.16-0.21 to unpack. gzip -1 saved as much in transfer and spent it again
unpacking (0.52 CPU-s).

Each compressed copy is made once per content, when a host first needs it, in the operator's
cache (``artifacts.cache_dir``/zstd/<sha256>.zst), written by rename so a crash never leaves half
a copy. Nothing trusts it further than that: the host hashes what it unpacked against the
original's sha256 before the file is recorded as placed.

Example::

    sent = zstd_copy(binary.local, binary.sha256, cache_dir(cluster))  # <cache>/zstd/<sha256>.zst
    # on the host: zstd -dqc <uploaded copy> > <dest>.kthw-new
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import zstandard

from kthw.model import Cluster

LEVEL = 3  # zstd's default: ~27% of a Go binary, ~0.3 s per 100 MB on 2 cores, made once
UNPACK = "zstd -dqc"  # on the host: the frame in (its checksum checked), the original out
PACKAGE = "zstd"  # the Debian package with UNPACK

_lock = threading.Lock()  # hosts planned in parallel ask for the same binaries


def cache_dir(cluster: Cluster) -> Path:
    """Where the compressed copies live: beside the downloaded artifacts."""
    return Path(os.path.expanduser(cluster.artifacts.cache_dir)) / "zstd"


def zstd_copy(local: Path, sha256: str, cache: Path) -> Path:
    """The zstd copy of ``local`` (whose content has ``sha256``), made on first use."""
    out = cache / f"{sha256}.zst"
    with _lock:
        if not out.exists():
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{out.name}.")
            try:
                with os.fdopen(fd, "wb") as dst, local.open("rb") as src:
                    packer = zstandard.ZstdCompressor(level=LEVEL, threads=-1, write_checksum=True)
                    packer.copy_stream(src, dst, size=local.stat().st_size)
                os.replace(tmp, out)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    return out
