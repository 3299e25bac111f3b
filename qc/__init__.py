"""The `qc` command: one entry point for training, export, the edge runtime and telemetry."""
