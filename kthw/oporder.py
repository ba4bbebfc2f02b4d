"""pyinfra's operation order, read from the call stack without reading source files.

pyinfra orders every operation by the line numbers of its call stack
(``pyinfra.api.util.get_operation_order_from_stack``). It takes them with ``inspect.stack()``,
which for every frame of every operation also looks up the module and reads source lines it
never uses: on a converged plan of 300 workers that was 38 of 64 seconds (bench/plan.py,
profiled). :func:`operation_order` walks the same frames and returns the same numbers from
``f_code.co_filename`` and ``f_lineno`` alone; :func:`install` puts it in pyinfra's place
(config.py does, for every pyinfra run of this project). tests/unit/test_oporder.py compares it
with pyinfra's own on the same stacks.
"""

from __future__ import annotations

import importlib
import sys

import pyinfra
from pyinfra.api import util as _util

# The module (``pyinfra.api.operation`` as an attribute is the decorator of that name).
_operation = importlib.import_module("pyinfra.api.operation")


def operation_order(state) -> list[int]:
    """What ``get_operation_order_from_stack`` returns, for the caller's stack."""
    frames = []
    frame = sys._getframe(1)  # from the caller out (pyinfra's own frame there is skipped anyway)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()  # outermost first, as pyinfra reverses inspect.stack()
    start = 0
    if state.current_deploy_filename:  # the *first* frame of the deploy file (else, as pyinfra: the last)
        start = next((i for i, f in enumerate(frames) if f.f_code.co_filename == state.current_deploy_filename),
                     len(frames) - 1)
    numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    numbers += [f.f_lineno for f in frames[start:] if not f.f_code.co_filename.startswith(_util.PYINFRA_INSTALL_DIR)]
    return numbers


def install() -> None:
    _operation.get_operation_order_from_stack = operation_order
