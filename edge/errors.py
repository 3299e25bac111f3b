"""The edge's error type: a bundle, config, source or command the camera box cannot use."""

from firmware_io.errors import QCError

__all__ = ["EdgeError", "QCError"]


class EdgeError(QCError):
    """A problem on the camera box that names what is wrong and where."""
