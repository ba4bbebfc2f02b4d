"""pyinfra settings for this project (read from the working directory by the CLI)."""

from pyinfra import config

config.REQUIRE_PYINFRA_VERSION = "~=3.10"
# A cluster is all or nothing: one failed host stops the whole deploy (a rerun converges).
config.FAIL_PERCENT = 0
