"""Where a lab run's CPU goes: every process on this machine sampled from /proc every 0.25 s,
its CPU seconds (user + system) summed by the lab node it runs in (its LXC cgroup) and its
command name. A process that starts and ends between two samples is missed, so the sums are a
lower bound; the machine's own total (/proc/stat) is given beside them.

    sampler = CpuSampler()
    sampler.start()
    ...                                   # the deploy, the wait until it settled
    by_command, by_node, total = sampler.stop()
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import threading
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / HZ  # all but idle and iowait


def container_group(pid: str) -> str:
    """The LXC container's own cgroup of a process: its cgroup path up to the lxc.payload.*
    part (LXC names it lxc.payload.NAME-1, -2... while an earlier one's lingers), or "" for
    a process of this machine."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(",") or controllers == "":
            parts = path.strip("/").split("/")
            return next(("/".join(parts[:i + 1]) for i, p in enumerate(parts) if p.startswith("lxc.payload.")), "")
    return ""


def lab_groups() -> dict[str, str]:
    """{container cgroup: node name} of the running lab nodes (kthw-NAME containers)."""
    names = subprocess.run(["lxc-ls", "-1", "--running"], capture_output=True, text=True).stdout.split()
    groups = {}
    for name in (n for n in names if n.startswith("kthw-")):
        pid = subprocess.run(["lxc-info", "-n", name, "-pH"], capture_output=True, text=True).stdout.strip()
        if pid:
            groups[container_group(pid)] = name.removeprefix("kthw-")
    return groups


class CpuSampler:
    def __init__(self, every: float = 0.25):
        self.every = every
        self.seen: dict[tuple[str, str], list] = {}  # (pid, start time) -> [node, command, first, last]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                command = stat[stat.index("(") + 1:stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                cpu, key = (int(fields[11]) + int(fields[12])) / HZ, (pid, fields[19])
                if key in self.seen:
                    self.seen[key][3] = cpu
                else:
                    group = container_group(pid)
                    if group and group not in self.groups:  # a node started meanwhile
                        self.groups = lab_groups()
                    self.seen[key] = [self.groups.get(group, "this machine"), command, None, cpu]
            except (OSError, ValueError, IndexError):  # gone meanwhile
                continue

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def start(self) -> None:
        self.groups = lab_groups()
        self._sample()
        for entry in self.seen.values():
            entry[2] = entry[3]  # what these had used before counts for nothing
        self._busy = _machine_busy()
        self._thread.start()

    def stop(self) -> tuple[collections.Counter, collections.Counter, float]:
        """(CPU s by (role, command), CPU s by node, the machine's busy CPU s meanwhile)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        by_command, by_node = collections.Counter(), collections.Counter()
        for node, command, first, last in self.seen.values():
            used = last - (first or 0.0)
            role = re.sub(r"-\d+$", "", node)  # master-2 -> master
            by_command[(role, command)] += used
            by_node[node] += used
        return by_command, by_node, _machine_busy() - self._busy
