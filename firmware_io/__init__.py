"""Hardware and telemetry I/O for the edge: GPIO backends, the reject gate, the MQTT client with its spool."""

from importlib import metadata

try:
    VERSION = metadata.version("qc-inspect")  # the installed package's, as boxes report it to the fleet
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "unknown"
