"""The workstation's error type: a dataset, run or setting that training cannot use."""

from firmware_io.errors import QCError

__all__ = ["QCError", "TrainingError"]


class TrainingError(QCError):
    """A problem in training, evaluation or export that names what is wrong and where."""
