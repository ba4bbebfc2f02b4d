"""The probe that lets a new cluster's masters skip etcdctl's 10 s wait (kthw.commands.etcd_join):
run for real against this machine's loopback."""

from __future__ import annotations

import socket
import subprocess
import sys

from kthw.commands import ALL_REFUSE, etcd_join


def probe(*addresses: str) -> int:
    return subprocess.run([sys.executable, "-c", ALL_REFUSE, *addresses], timeout=30).returncode


def closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: a connection to it is refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_address_refusing_means_no_cluster_runs():
    assert probe(f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}") == 1


def test_one_listener_among_refusals_means_ask_etcd():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert probe(f"127.0.0.1:{closed_port()}", f"127.0.0.1:{server.getsockname()[1]}") == 0


def test_the_join_asks_etcd_only_after_the_probe():
    cmd = etcd_join("master-3", "https://10.0.0.13:2380", ["https://10.0.0.11:2379", "https://10.0.0.12:2379"])
    assert cmd.startswith("if python3 -c ")
    probe_part, rest = cmd.split(" && members=$(", 1)
    assert probe_part.endswith(" 10.0.0.11:2379 10.0.0.12:2379")
    assert rest.split(")", 1)[0].endswith(" member list 2>/dev/null")
