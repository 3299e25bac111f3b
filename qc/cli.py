"""`qc`: one command for the whole system. Subcommands import their heavy dependencies lazily,
so the edge box (no TensorFlow) runs `qc run` and friends, and `qc --help` is instant."""

from __future__ import annotations

import argparse
import json
import os
import sys

from firmware_io.errors import QCError
from qc import commands


def _require_tf():
    from training.quiet import captured_output

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow C++ chatter; Python errors still raise
    try:
        with captured_output():  # TensorFlow's start-up log lines (shown if the import fails)
            import tensorflow  # noqa: F401
    except ImportError as exc:
        raise QCError("this command needs TensorFlow: pip install 'qc-inspect[train]'") from exc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qc",
        description="CNN quality inspection: make data, train, evaluate, export an int8 bundle, "
        "run it on a camera box with a reject gate and MQTT telemetry.",
        epilog="Start with `make demo`, or: qc synth data --count 600 && qc train --data data --out run "
        "&& qc evaluate run --data data && qc export run --out bundle && qc run --bundle bundle --source data/test",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for spec in commands.SPECS:
        sp = sub.add_parser(spec.name, help=spec.help, description=spec.help)
        spec.add_args(sp)
        sp.set_defaults(_spec=spec)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    spec = args._spec
    try:
        if spec.needs_tf:
            _require_tf()
        result = spec.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except commands.USER_ERRORS as exc:
        print(f"qc {spec.name}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(result, int):
        return result
    try:
        if result is not None:
            print(json.dumps(result, indent=1, default=str) if not isinstance(result, str) else result, flush=True)
    except BrokenPipeError:  # the reader stopped early (`| head`): not this command's failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's advice: no error at exit
    return 0
