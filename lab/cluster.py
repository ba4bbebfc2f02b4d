"""The lab's view of a cluster file: the same nodes and networks, with binaries from the lab's
own builds (artifacts.source: directory), since the lab reaches no release host, and the
lab's registry (lab/registry, on the host's address of the node network) as the mirror of
every registry the cluster pulls from, since the lab reaches no registry either: the nodes
pull their images as the shipped design does on the Internet, when a pod first needs one.

KTHW_LAB_IMAGES=archives (or ``images="archives"``) instead copies the offline image archives
to every node and imports them (artifacts.images: the air-gapped way, slower; the bridge
topology of the lab tests runs it so that both ways stay tested).

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
# Every registry the cluster's images and the lab tests' come from (lab/artifacts/build's
# images/IMAGES): lab/up pushes them all to lab/registry.
MIRRORED = ("registry.k8s.io", "docker.io", "kthw.local")
IMAGE_MODES = ("registry", "archives")


def lab_cluster_yaml(source: Path | None = None, build_dir: str | None = None,
                     images: str | None = None) -> tuple[str, list[str]]:
    """(YAML text, notes) for the lab's copy of ``source``; ``images``: "registry" (default,
    or KTHW_LAB_IMAGES) or "archives"."""
    images = images or os.environ.get("KTHW_LAB_IMAGES") or "registry"
    if images not in IMAGE_MODES:
        raise SystemExit(f"lab: KTHW_LAB_IMAGES={images!r} is not one of {', '.join(IMAGE_MODES)}. "
                         "Fix: unset it (the lab registry) or set it to archives.")
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
        **({"images": str(build / "images")} if images == "archives" else {}),
        # lab/registry listens on the host's address of the node network (lab/net's bridge).
        # With archives it still serves registry.k8s.io, for conformance tests that must pull.
        "registry_mirrors": {
            registry: [f"http://{next(cluster.node_network.hosts())}:{REGISTRY_PORT}"]
            for registry in (MIRRORED if images == "registry" else MIRRORED[:1])
        },
    }
    # Keep the original's generated state (PKI) where it was.
    raw["state_dir"] = str(cluster.state_dir.parent)
    how = ("images pulled through lab/registry" if images == "registry"
           else "images from offline archives (artifacts.images)")
    notes = [f"lab copy of {source}: artifacts from {build}, {how}"]
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
