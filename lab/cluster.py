"""The lab's view of a cluster file: the same nodes and networks, with binaries and images
from the lab's own builds (artifacts.source: directory), since the lab reaches no release host,
and the lab's registry (lab/registry, on the host's address of the node network) as the
mirror of registry.k8s.io, since the lab reaches no registry either.

    python lab/cluster.py [CLUSTER_FILE] > .kthw/lab/cluster.yaml

Lab code, not part of the product: the deploy never imports it.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kthw.model import cluster_file_from_env, load_cluster  # noqa: E402

DEFAULT_BUILD_DIR = "~/.cache/kthw/lab-artifacts"
REGISTRY_PORT = int(os.environ.get("KTHW_LAB_REGISTRY_PORT", "5000"))  # lab/registry's port


def lab_cluster_yaml(source: Path | None = None, build_dir: str | None = None) -> tuple[str, list[str]]:
    """(YAML text, notes) for the lab's copy of ``source``."""
    source = Path(source or cluster_file_from_env()).resolve()
    cluster = load_cluster(source)  # validate the original first
    raw = yaml.safe_load(source.read_text())
    build = Path(os.path.expanduser(build_dir or os.environ.get("KTHW_ARTIFACTS_OUT") or DEFAULT_BUILD_DIR))
    raw = copy.deepcopy(raw)
    raw["artifacts"] = {
        **{k: v for k, v in (raw.get("artifacts") or {}).items() if k == "cache_dir"},
        "source": "directory",
        "directory": str(build),
        "checksums": "SHA256SUMS",
        "images": str(build / "images"),
        # lab/registry listens on the host's address of the node network (lab/net's bridge).
        "registry_mirrors": {
            "registry.k8s.io": [f"http://{next(cluster.node_network.hosts())}:{REGISTRY_PORT}"],
        },
    }
    # Keep the original's generated state (PKI) where it was.
    raw["state_dir"] = str(cluster.state_dir.parent)
    notes = [f"lab copy of {source}: artifacts from {build}, registry.k8s.io mirrored by lab/registry"]
    if cluster.cni == "weave":
        # The lab runs the model as it is: no Weave images means no lab, never a quiet switch.
        want = [f"docker.io/weaveworks/{n}:{cluster.versions.weave.lstrip('v')}" for n in ("weave-kube", "weave-npc")]
        try:
            listed = (build / "images" / "IMAGES").read_text().split()
        except OSError:
            listed = []
        missing = [ref for ref in want if ref not in listed]
        if missing:
            raise SystemExit(f"lab: {source} runs cni: weave, but {build / 'images'} lacks {', '.join(missing)}. "
                             "Fix: lab/artifacts/build weave (it needs ../shared/sources/weave-v2.8.1.tar.gz).")
    header = "".join(f"# {n}\n" for n in notes)
    return header + yaml.safe_dump(raw, sort_keys=False), notes


def main(argv: list[str]) -> int:
    text, notes = lab_cluster_yaml(Path(argv[0]) if argv else None)
    for note in notes[1:]:
        print(f"note: {note}", file=sys.stderr)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
