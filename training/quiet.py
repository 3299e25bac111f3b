"""Keep TensorFlow's internals off the console: the converter prints the saved model's signature (a
hundred lines of TensorSpec) and its C++ logging writes straight to file descriptor 2. What they wrote is
kept and shown only when the work inside fails."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile

__all__ = ["captured_output"]


@contextlib.contextmanager
def captured_output():
    """Capture Python's stdout and stderr and the process's fd 1 and 2; replay them to stderr on an error."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as native, contextlib.ExitStack() as stack:
        python = io.StringIO()
        stack.enter_context(contextlib.redirect_stdout(python))
        stack.enter_context(contextlib.redirect_stderr(python))
        for fd in (1, 2):
            os.dup2(native.fileno(), fd)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            if failed:
                native.seek(0)
                sys.__stderr__.write(python.getvalue() + native.read().decode(errors="replace"))
                sys.__stderr__.flush()
