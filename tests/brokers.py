"""Real MQTT brokers for tests on a free loopback port: Mosquitto where installed, else embedded amqtt."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from firmware_io.mqtt.broker import EmbeddedBroker, free_port

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


def wait_port(port: int, up: bool = True, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if up:
                return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not come {'up' if up else 'down'}")


class Broker:
    """start / stop / restart on the same port; `users` turns on password authentication (Mosquitto)."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None,
                 prefer: str = os.environ.get("QC_TEST_BROKER", "auto")):
        self.workdir, self.users = Path(workdir), users
        self.port = free_port()
        self.kind = "mosquitto" if MOSQUITTO and prefer in ("auto", "mosquitto") else "amqtt"
        self._proc = None
        self._embedded = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _mosquitto_conf(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {self.workdir}/",
                 "autosave_interval 1", "max_queued_messages 100000"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to user mosquitto, who cannot write the persistence file
        if self.users:
            pw = self.workdir / "passwd"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            subprocess.run([str(Path(MOSQUITTO).with_name("mosquitto_passwd")) if Path(MOSQUITTO).with_name(
                "mosquitto_passwd").exists() else "mosquitto_passwd", "-U", str(pw)], check=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> Broker:
        if self.kind == "mosquitto":
            self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self._mosquitto_conf())],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            self._embedded = EmbeddedBroker(self.port).start()
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self._proc:
            self._proc.terminate()  # SIGTERM: Mosquitto saves its persistence file
            self._proc.wait(10)
            self._proc = None
        if self._embedded:
            self._embedded.stop()
            self._embedded = None
        wait_port(self.port, up=False)

    def restart(self) -> None:
        self.stop()
        self.start()
