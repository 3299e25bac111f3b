"""Hardware and telemetry I/O for the edge: GPIO backends, the reject gate, the MQTT client with its spool."""
