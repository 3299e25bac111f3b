"""The subcommands of `qc`, one module per subject, each registering its commands in `qc.registry`.

A command imports what it needs when it runs, so the box (no TensorFlow) runs `qc run` and friends and
`qc --help` answers at once."""

# registered in the order of the work, which `qc --help` follows
from qc.commands import data, train, bundle, box, plant  # noqa: F401, I001
from qc.registry import SPECS, USER_ERRORS  # noqa: I001

__all__ = ["SPECS", "USER_ERRORS"]
