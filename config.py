"""pyinfra settings for this project (read from the working directory by the CLI)."""

from pyinfra import config

config.REQUIRE_PYINFRA_VERSION = "~=3.10"
# A cluster is all or nothing: one failed host stops the whole deploy (a rerun converges).
config.FAIL_PERCENT = 0

# pyinfra orders operations by their call stack's line numbers; read them without reading every
# source file again for every operation (kthw/oporder.py: the same numbers, a third of the time).
from kthw.oporder import install  # noqa: E402

install()
