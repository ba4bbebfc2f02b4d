"""Draw docs/img/bench-lab.png from bench/lab_deploy.py's kept figures (.kthw/bench/lab.json):
the newest record of each topology. Left: where a cold deploy's time went, stage by stage, up to
every Node Ready and CoreDNS answering. Right: time against node count for the cold deploy, a
worker added, and the no-op rerun.

    python bench/plot_lab.py [RESULTS.json] [OUT.png]
    python bench/plot_lab.py --table [RESULTS.json]     the same figures as a Markdown table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STAGES = ["cold: start-up, inventory, connect", "cold: facts and plan", "cold: packages and binaries",
          "cold: images copied and imported", "cold: files and settings (certs, configs, units, sysctls)",
          "cold: services started", "cold: waits for health", "cold: add-ons applied", "cold: barriers",
          "cold: end of run (results, disconnect)", "settled"]


def newest(records: list[dict]) -> list[dict]:
    by_topology: dict[str, dict] = {}
    # a run that stopped half-way, or measured the cold deploy only (--cold): not drawn
    for r in (r for r in records if "failed" not in r and not r.get("cold only")):
        if r["topology"] not in by_topology or r["date"] >= by_topology[r["topology"]]["date"]:
            by_topology[r["topology"]] = r
    return sorted(by_topology.values(), key=lambda r: r["nodes"])


def main(results: Path, out: Path) -> None:
    records = newest(json.loads(results.read_text()))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    labels = [f"{r['topology']}\n{r['nodes']} nodes" for r in records]
    bottom = [0.0] * len(records)
    colours = plt.get_cmap("tab20").colors  # more stages than tab10's 10 colours: none repeats
    for stage, colour in zip(STAGES, colours[::2] + colours[1::2], strict=False):
        values = [r.get(stage, 0.0) for r in records]
        name = "then until all Ready, DNS answers" if stage == "settled" else stage.removeprefix("cold: ")
        left.bar(labels, values, bottom=bottom, label=name, color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for x, total in enumerate(bottom):
        left.text(x, total, f"{total:.0f} s", ha="center", va="bottom")
    left.set_ylabel("seconds")
    left.set_title("cold deploy, fresh machines to a working cluster")
    left.set_ylim(0, max(bottom) * 1.6)  # room above the bars for the legend
    left.legend(fontsize=7, loc="upper left", ncols=2)
    nodes = [r["nodes"] for r in records]
    right.plot(nodes, [r["cold deploy"] + r["settled"] for r in records], "o-", label="cold deploy, until settled")
    right.plot(nodes, [r["add a worker: deploy"] + r["add a worker: then Ready"] for r in records], "s-",
               label="one worker added (deploy, until Ready)")
    right.plot(nodes, [r["remove it: deploy"] for r in records], "v-", label="that worker removed (deploy)")
    right.plot(nodes, [r["no-op: total"] for r in records], "^-", label="no-op rerun (median of 5)")
    right.set_xlabel("nodes (load balancer, masters, workers)")
    right.set_ylabel("seconds")
    right.set_xticks(nodes)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    right.set_title("time against cluster size")
    dates = sorted({r["date"][:10] for r in records})
    fig.suptitle(f"kthw-pyinfra on the LXC lab, {records[0]['cores']} cores, {', '.join(dates)} "
                 f"(make bench-lab; commit {', '.join(sorted({r['commit'] for r in records}))})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


ROWS = ["machines", "cold deploy", *STAGES[:-1], "settled", "dry run", "no-op: total", "no-op: start-up",
        "no-op: inventory", "no-op: connect", "no-op: facts", "no-op: plan", "no-op: operations", "no-op: end of run",
        "add a worker: machine", "add a worker: deploy", "add a worker: then Ready", "remove it: deploy",
        "per master: RSS MiB", "per master: working set MiB", "per master: inotify instances",
        "per worker: RSS MiB", "per worker: working set MiB", "per worker: inotify instances",
        "per loadbalancer: RSS MiB", "per loadbalancer: inotify instances"]


def table(results: Path) -> None:
    records = newest(json.loads(results.read_text()))
    print("| | " + " | ".join(f"{r['topology']} ({r['nodes']} nodes)" for r in records) + " |")
    print("|---" * (len(records) + 1) + "|")
    for row in (row for row in ROWS if any(row in r for r in records)):  # (rows older runs lack: left out)
        unit = "" if "MiB" in row or "inotify" in row else " s"
        cells = [f"{r[row]:.1f}{unit}" if isinstance(r.get(row), float) else str(r.get(row, "-")) for r in records]
        print(f"| {row} | " + " | ".join(cells) + " |")
    print("\nmeasured " + ", ".join(f"{r['topology']} {r['date']} (commit {r['commit']})" for r in records))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--table":
        table(Path(args[1]) if len(args) > 1 else REPO / ".kthw" / "bench" / "lab.json")
        sys.exit(0)
    main(Path(args[0]) if args else REPO / ".kthw" / "bench" / "lab.json",
         Path(args[1]) if len(args) > 1 else REPO / "docs" / "img" / "bench-lab.png")
