"""The README stays true to the code."""

from __future__ import annotations

import re

from kthw.diagram import mermaid
from kthw.model import REPO_ROOT, load_cluster

README = (REPO_ROOT / "README.md").read_text()


def test_topology_picture_matches_the_model():
    block = re.search(r"<!-- diagram:start -->\n```mermaid\n(.*?)```\n<!-- diagram:end -->", README, re.S)
    assert block, "README lost its diagram markers"
    assert block.group(1) == mermaid(load_cluster()), "run `make diagram` and paste it into README.md"


def test_every_cluster_key_is_documented():
    from kthw.model import ClusterFile

    for section, field in ClusterFile.model_fields.items():
        model = field.annotation
        if hasattr(model, "model_fields") and section != "versions":
            for key in model.model_fields:
                assert f"`{section}.{key}`" in README, f"{section}.{key} is not in README's table"
        else:
            assert f"`{section}" in README, f"{section} is not in README's table"
