"""The one base class for errors a user can fix (bad config, dataset, bundle, payload): printed, not traced."""


class QCError(Exception):
    """An error that names what is wrong and where."""
