"""MQTT settings; the password comes from an environment variable, never from the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from firmware_io.errors import FirmwareIOError
from firmware_io.settings import Strict

DEFAULT_PORT, TLS_PORT = 1883, 8883
DEFAULT_URL = f"mqtt://127.0.0.1:{DEFAULT_PORT}"


class MQTTConfig(Strict):
    enabled: bool = Field(True, description="publish telemetry at all")
    url: str = Field(DEFAULT_URL, description="mqtt://[user@]host:port or mqtts://... for TLS")
    password_env: str = Field("QC_MQTT_PASSWORD", description="environment variable holding the password")
    password_file: Path | None = Field(None, description="or a file holding it (0600, e.g. a systemd credential)")
    client_id: str | None = Field(None, description="unique per station; default qc-<line>-<station>")
    prefix: str | None = Field(None, description="topic prefix; default qc/<line>/<station>")
    ca_file: Path | None = Field(None, description="CA certificate for mqtts")
    cert_file: Path | None = Field(None, description="client certificate (optional)")
    key_file: Path | None = Field(None, description="client key (optional)")
    keepalive_s: int = Field(30, ge=5)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    spool_path: Path = Field(Path("spool.sqlite"), description="on-disk spool (SQLite, WAL)")
    spool_sync: Literal["full", "normal"] = Field(
        "full", description="full: every event is on disk (fsync) before it is accepted, safe against power "
        "cuts; normal: safe against a killed process, several times faster, may lose the last events on a power cut")
    spool_max_events: int = Field(100_000, ge=10, description="spool capacity; an alarm is raised at 80 %")
    spool_reserve_mb: float = Field(16.0, ge=0, description="free disk kept under the spool so that it can always "
                                    "drain: below it new events are refused, with a spool_full alarm")
    when_full: Literal["drop_stats_then_refuse", "drop_oldest"] = Field(
        "drop_stats_then_refuse", description="full spool: drop stats first and then refuse new events (the "
        "runtime alarms), or drop the oldest events of any kind")
    commands: bool = Field(False, description="accept commands on <prefix>/cmd/<name> (anyone who may publish there "
                           "runs the line: restrict cmd/# with the broker's ACL, deploy/mosquitto-acl.conf)")
    max_command_bytes: int = Field(4096, ge=64)
    threshold_limits: tuple[float, float] = Field((0.01, 0.99), description="the range a threshold may take from a "
                                                  "command, or from a bundle loaded by command")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"'{v}' is not mqtt://host:port or mqtts://host:port")
        if parts.password is not None:
            raise ValueError("the URL holds a password: secrets come from the environment (password_env) or a file "
                             "(password_file), never from the config or the command line")
        return v

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (TLS_PORT if parts.scheme == "mqtts" else DEFAULT_PORT)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def username(self) -> str | None:
        return urlsplit(self.url).username

    @property
    def password(self) -> str | None:
        if self.password_env in os.environ:
            return os.environ[self.password_env]
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise FirmwareIOError(f"mqtt.password_file {self.password_file}: cannot be read ({exc})") from None
