"""Binaries sent zstd-compressed (kthw/packing.py): the copy the real zstd unpacks to the very
bytes, made once, never half-made; which files travel packed and which package that needs."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from kthw import packing
from kthw.context import Wants
from kthw.ops import ManagedFile


def binary(tmp_path, size=3_000_000):
    local = tmp_path / "kube-thing"
    local.write_bytes(os.urandom(size // 3) + b"\0" * (size - size // 3))  # part random, part not
    return local, hashlib.sha256(local.read_bytes()).hexdigest()


def test_the_host_command_unpacks_the_copy_to_the_same_bytes(tmp_path):
    local, sha = binary(tmp_path)
    copy = packing.zstd_copy(local, sha, tmp_path / "cache")
    assert copy == tmp_path / "cache" / f"{sha}.zst" and copy.stat().st_size < local.stat().st_size * 0.7
    out = tmp_path / "landed"
    subprocess.run(f"{packing.UNPACK} {copy} > {out}", shell=True, check=True)  # as kthw.ops runs it
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha


def test_the_copy_is_made_once(tmp_path):
    local, sha = binary(tmp_path)
    first = packing.zstd_copy(local, sha, tmp_path / "cache")
    made = first.stat().st_mtime_ns, first.stat().st_ino
    assert packing.zstd_copy(local, sha, tmp_path / "cache") == first
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == made


def test_a_failed_copy_leaves_nothing_behind(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError):
        packing.zstd_copy(tmp_path / "missing", "0" * 64, cache)
    assert list(cache.iterdir()) == []


def test_only_local_files_with_a_cache_travel_packed(tmp_path):
    local, sha = binary(tmp_path, 1000)
    text = ManagedFile.text("/etc/x.conf", "x = 1\n")
    assert text.transfer()[1] == "cat"
    assert ManagedFile.binary("/usr/local/bin/x", local, sha).transfer() == (str(local), "cat")
    packed = ManagedFile.binary("/usr/local/bin/x", local, sha, zstd_cache=tmp_path / "cache")
    assert packed.transfer() == (str(tmp_path / "cache" / f"{sha}.zst"), packing.UNPACK)


def test_zstd_is_installed_where_a_packed_file_goes(tmp_path):
    local, sha = binary(tmp_path, 1000)
    plain = Wants(packages=["haproxy"], files={"config": [ManagedFile.text("/etc/haproxy/haproxy.cfg", "")]})
    assert plain.all_packages() == ["haproxy"]
    packed = Wants(packages=["socat"], files={"binaries": [
        ManagedFile.binary("/usr/local/bin/x", local, sha, zstd_cache=tmp_path)]})
    assert packed.all_packages() == ["socat", packing.PACKAGE]
