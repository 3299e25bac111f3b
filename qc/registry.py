"""The registry of `qc`'s subcommands: each subject module in qc/commands/ registers its commands here."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from firmware_io.errors import QCError

__all__ = ["SPECS", "USER_ERRORS", "Spec", "command"]

USER_ERRORS = (QCError, FileExistsError, FileNotFoundError, NotADirectoryError)
SPECS: list[Spec] = []


@dataclass
class Spec:
    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], object]
    needs_tf: bool = False


def command(name: str, help: str, args: Callable[[argparse.ArgumentParser], None] = lambda p: None,
            needs_tf: bool = False):
    """Register `run` under `name`; `args` adds its arguments to the subcommand's parser."""

    def wrap(run):
        SPECS.append(Spec(name, help, args, run, needs_tf))
        return run

    return wrap
