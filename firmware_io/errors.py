"""Errors a user can fix (a bad config, dataset, bundle or payload): printed as one line, never traced.

`QCError` is the base every layer's own error derives from; it lives here, in the lowest layer, so that
`firmware_io` needs nothing above it. `FirmwareIOError` is this layer's: GPIO, MQTT, the broker.
"""

__all__ = ["ConfigError", "FirmwareIOError", "QCError"]


class QCError(Exception):
    """An error that names what is wrong and where."""


class FirmwareIOError(QCError):
    """GPIO or MQTT that cannot be used as configured."""


class ConfigError(QCError):
    """A settings file or value that does not validate, with the key named."""
