"""kthw.oporder returns what pyinfra's own get_operation_order_from_stack returns."""

from __future__ import annotations

from types import SimpleNamespace

import pyinfra
import pytest
from pyinfra.api import util

from kthw.oporder import operation_order

# As in a real run, both are called from pyinfra's own code (operation.py), whose frames are skipped.
_caller: dict = {}
exec(compile("def call(f, state):\n    return f(state)\n", f"{util.PYINFRA_INSTALL_DIR}/api/operation.py", "exec"),
     _caller)


def nested(depth: int, state) -> tuple[list[int], list[int]]:
    if depth:
        return nested(depth - 1, state)
    return _caller["call"](util.get_operation_order_from_stack, state), _caller["call"](operation_order, state)


@pytest.mark.parametrize("is_cli", [True, False])
@pytest.mark.parametrize("deploy_file", [None, __file__, "/no/such/deploy.py"])
def test_the_same_line_numbers_as_pyinfra(monkeypatch, is_cli, deploy_file):
    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    theirs, ours = nested(3, state)
    assert ours == theirs
    if deploy_file != "/no/such/deploy.py":  # found (or no deploy file): the lines of every frame
        assert len(ours) > 3


def test_install_puts_it_where_pyinfra_looks(monkeypatch):
    import importlib

    from kthw import oporder

    module = importlib.import_module("pyinfra.api.operation")
    monkeypatch.setattr(module, "get_operation_order_from_stack", util.get_operation_order_from_stack)
    oporder.install()
    assert module.get_operation_order_from_stack is operation_order
