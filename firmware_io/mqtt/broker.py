"""MQTT brokers on loopback: an embedded one (amqtt, pure Python, its own asyncio loop on a thread), the
default for the demo; and `LocalBroker`, Mosquitto where it is installed (else the embedded one), which
tests and benchmarks start, stop and restart on a free port."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from firmware_io.errors import FirmwareIOError
from firmware_io.mqtt.config import DEFAULT_PORT

__all__ = ["MOSQUITTO", "EmbeddedBroker", "LocalBroker", "free_port", "wait_port"]

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    def __init__(self, port: int = DEFAULT_PORT, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise FirmwareIOError("the embedded broker needs amqtt: pip install 'qc-inspect[dev]' (or run Mosquitto)") from exc
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        config = {"listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        ready, failure = threading.Event(), []

        def serve():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)

            async def boot():
                self._broker = Broker(config)
                await self._broker.start()

            try:
                self._loop.run_until_complete(boot())
            except Exception as exc:  # port in use, ...
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="mqtt-broker", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            raise FirmwareIOError(f"embedded broker could not start on {self.host}:{self.port}: "
                                  f"{failure[0] if failure else 'timed out'}")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


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


class LocalBroker:
    """start / stop / restart on the same port; `users` turns on password authentication and `acl_file` an
    access control list (Mosquitto)."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None,
                 prefer: str = os.environ.get("QC_TEST_BROKER", "auto"), acl_file: Path | None = None):
        self.workdir, self.users, self.acl_file = Path(workdir), users, acl_file
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
            if self.acl_file:
                lines.append(f"acl_file {self.acl_file}")
        else:
            lines.append("allow_anonymous true")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> LocalBroker:
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
