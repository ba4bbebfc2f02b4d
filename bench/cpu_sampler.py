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
import threading
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")
NODE = re.compile(r"lxc\.payload\.kthw-(.+?)(?:-\d+)?$")  # LXC adds -1, -2... while an old group lingers


def _machine_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / HZ  # all but idle and iowait


def _node_of(pid: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(",") or controllers == "":
            m = NODE.match(path.strip("/").split("/")[0])
            return m.group(1) if m else "this machine"
    return "this machine"


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
                    self.seen[key] = [_node_of(pid), command, None, cpu]
            except (OSError, ValueError, IndexError):  # gone meanwhile
                continue

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def start(self) -> None:
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
