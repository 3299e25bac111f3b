"""MQTT telemetry that loses nothing: an on-disk spool, a paho-mqtt 2.x client, an embedded broker,
a collector and a yield report."""
