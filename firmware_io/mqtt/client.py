"""Telemetry over MQTT (paho-mqtt 2.x) with store-and-forward.

Every event goes to the spool first; a sender thread publishes the spool in order while connected and
deletes an event when the broker acknowledges it (QoS 1) or it has been written (QoS 0). After an outage
or a restart the spool is replayed from its oldest event; consumers deduplicate by `id`.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from firmware_io.errors import FirmwareIOError
from firmware_io.mqtt.config import MQTTConfig
from firmware_io.mqtt.spool import Spool, SpoolFull

__all__ = ["MQTTTelemetry", "new_client", "prefix_for"]

log = logging.getLogger("qc.mqtt")
MAX_IN_FLIGHT = 64


def prefix_for(cfg: MQTTConfig, line: str, station: str) -> str:
    return cfg.prefix or f"qc/{line}/{station}"


def tls_context(cfg: MQTTConfig) -> ssl.SSLContext:
    """The TLS settings of mqtts://: the broker's certificate checked against ca_file (else the system's CAs)
    and its host name; a client certificate where one is configured."""
    for key in ("ca_file", "cert_file", "key_file"):
        if (file := getattr(cfg, key)) is not None and not Path(file).is_file():
            raise FirmwareIOError(f"mqtt.{key} {file}: no such file")
    try:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        if cfg.cert_file:
            ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a file that is not a certificate or key
        raise FirmwareIOError(f"mqtt TLS files {cfg.ca_file}, {cfg.cert_file}, {cfg.key_file}: {exc}") from None
    return ctx


def diagnose(cfg: MQTTConfig, timeout: float = 5.0) -> str:
    """Why a connection to the broker failed, found by trying its steps one by one: paho says only that it did."""
    where = f"{cfg.host}:{cfg.port}"
    try:
        sock = socket.create_connection((cfg.host, cfg.port), timeout=timeout)
    except ConnectionRefusedError:
        return f"refused: nothing listens on {where}"
    except TimeoutError:
        return f"timeout: {where} did not answer within {timeout:g} s"
    except OSError as exc:
        return f"unreachable: {where}: {exc.strerror or exc}"
    with sock:
        if not cfg.tls:
            return (f"{where} took the connection but ended the MQTT session: a TLS port (use mqtts://), or a "
                    "broker that refuses this client")
        try:
            with tls_context(cfg).wrap_socket(sock, server_hostname=cfg.host):
                pass
        except ssl.SSLCertVerificationError as exc:
            return f"certificate: {exc.verify_message} (the broker's certificate against mqtt.ca_file {cfg.ca_file})"
        except ssl.SSLError as exc:
            return f"TLS: {exc.reason or exc} (a plain MQTT port? use mqtt://)"
        except OSError as exc:
            return f"TLS: {exc}"
    return f"{where} completed TLS but ended the MQTT session"


def new_client(cfg: MQTTConfig, client_id: str, clean_session: bool | None, protocol=mqtt.MQTTv311,
               manual_ack: bool = False) -> mqtt.Client:
    """A paho 2.x client with the config's credentials, TLS and reconnect backoff (not yet connected). MQTT 5
    takes `clean_session=None` (its clean start is a connect option)."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=clean_session, protocol=protocol, manual_ack=manual_ack)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.tls:
        client.tls_set_context(tls_context(cfg))
    client.reconnect_delay_set(min_delay=max(1, round(cfg.reconnect_min_s)), max_delay=round(cfg.reconnect_max_s))
    return client


class MQTTTelemetry:
    def __init__(self, cfg: MQTTConfig, line: str, station: str, log_stream=sys.stderr):
        self.cfg = cfg
        self.prefix = prefix_for(cfg, line, station)
        self.spool = Spool(cfg.spool_path, cfg.spool_max_events, cfg.when_full, cfg.spool_sync.upper(),
                           int(cfg.spool_reserve_mb * 2**20))
        self.log_stream = log_stream
        self.connected = threading.Event()
        self.refused: str | None = None
        self._failure: str | None = None  # the last connection failure said
        self.counts = {"published": 0, "acked": 0, "refused_full": 0, "spool_errors": 0, "bad_commands": 0}
        self._handler: Callable[[str, dict], dict] | None = None
        self._in_flight: dict[int, int] = {}  # mid -> spool row id
        self._early: dict[int, float] = {}
        self._acked: list[int] = []
        self._generation = 0  # bumped on every connect: a send loop from before must not move _last_sent
        self._last_sent = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._closing = False
        self._near_full_alarmed = False
        self._full_alarmed = False
        self._inventory: bytes | None = None
        self.client = self._make_client(cfg, f"qc-{line}-{station}")
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self.client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()

    def _make_client(self, cfg: MQTTConfig, default_id: str) -> mqtt.Client:
        client = new_client(cfg, cfg.client_id or default_id, clean_session=True)
        client.will_set(f"{self.prefix}/status", "offline", qos=1, retain=True)  # before connect
        client.max_inflight_messages_set(MAX_IN_FLIGHT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _say(self, msg: str) -> None:
        print(f"[mqtt] {msg}", file=self.log_stream, flush=True)

    # --- paho callbacks (network thread) ---

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:  # refused (bad credentials, ...): never treated as connected
            self.refused = str(reason_code)
            self._failed(f"refused by the broker: {reason_code} (check the user in mqtt.url and the password in "
                         f"${self.cfg.password_env} or mqtt.password_file)")
            return
        self.refused = self._failure = None
        with self._lock:
            self._in_flight.clear()
            self._early.clear()
            self._last_sent = 0  # replay the spool from its oldest event
            self._generation += 1
        client.publish(f"{self.prefix}/status", "online", qos=1, retain=True)
        if self._inventory is not None:
            client.publish(f"{self.prefix}/info", self._inventory, qos=1, retain=True)
        if self.cfg.commands:
            client.subscribe(f"{self.prefix}/cmd/+", qos=1)
        self.connected.set()
        self._say(f"connected to {self.cfg.host}:{self.cfg.port}, {len(self.spool)} event(s) spooled")
        with self._wake:
            self._wake.notify()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.connected.is_set():
            self._say(f"disconnected ({reason_code}); events keep going to the spool")
        elif self.refused is None:  # ended before the broker acknowledged the session
            self._failed(diagnose(self.cfg))
        self.connected.clear()

    def _on_connect_fail(self, client, userdata):
        self._failed(diagnose(self.cfg))

    def _failed(self, reason: str) -> None:
        """A failed connection attempt: its reason said once (and alarmed, spooled) until it changes."""
        if reason != self._failure:
            self._failure = reason
            self._say(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {reason}; events keep going to the spool")
            self.alarm("mqtt_connect_failed", reason)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._lock:
            row = self._in_flight.pop(mid, None)
            if row is None:
                # acknowledged before publish() returned its mid to the sender (or a resend of an old one)
                self._early[mid] = time.monotonic()
            else:
                self._ack(row)
        with self._wake:
            self._wake.notify()

    def _ack(self, row_id: int) -> None:
        self._acked.append(row_id)  # deleted in batches by the sender: one transaction for many
        self.counts["acked"] += 1

    def _on_message(self, client, userdata, msg):
        name = msg.topic.rsplit("/", 1)[-1]
        if msg.topic.endswith("/result") or not msg.topic.startswith(f"{self.prefix}/cmd/"):
            return
        if not msg.payload:  # a retained command being cleared: nothing to run
            return
        if msg.retain:  # a command kept by the broker would run again on every reconnect: never obeyed
            self.counts["bad_commands"] += 1
            self.alarm("command_retained", f"retained command on {msg.topic} ignored: publish commands without the "
                       "retain flag, and clear it (an empty retained message on the topic)")
            return
        reply = self._command(name, msg.payload)
        client.publish(f"{self.prefix}/cmd/{name}/result", json.dumps(reply), qos=1)

    def _command(self, name: str, raw: bytes) -> dict:
        """Validate and run a command; an invalid, oversized or unknown one changes nothing."""
        if len(raw) > self.cfg.max_command_bytes:
            self.counts["bad_commands"] += 1
            return {"ok": False, "error": f"payload of {len(raw)} bytes exceeds {self.cfg.max_command_bytes}"}
        try:
            payload = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.counts["bad_commands"] += 1
            return {"ok": False, "error": f"payload is not UTF-8 JSON: {exc}"}
        if not isinstance(payload, dict):
            self.counts["bad_commands"] += 1
            return {"ok": False, "error": "payload must be a JSON object"}
        if self._handler is None:
            return {"ok": False, "error": "no command handler"}
        try:
            reply = self._handler(name, payload)
        except Exception as exc:  # the runtime never crashes on a payload
            reply = {"ok": False, "error": f"command failed: {exc}"}
        if not reply.get("ok"):
            self.counts["bad_commands"] += 1
        return reply

    # --- sending ---

    def _send_loop(self) -> None:
        """Publishes the spool in order; alive until close whatever happens (a database error, a full disk:
        said once, then tried again with backoff until it clears)."""
        backoff = 0.0
        while not self._closing:
            with self._wake:
                self._wake.wait(max(0.2, backoff))
            if not self.connected.is_set():
                continue
            try:
                self._send_some()
            except Exception as exc:
                if not backoff:
                    self._say(f"ALARM spool: {exc}; retrying until it clears")
                backoff = min(10.0, max(0.5, 2 * backoff))
                self.counts["spool_errors"] += 1
                continue
            if backoff:
                self._say("spool: working again")
            backoff = 0.0

    def _send_some(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
        try:
            self.spool.ack(acked)
        except Exception:
            with self._lock:
                self._acked[:0] = acked  # deleted next time: acknowledged is acknowledged
            raise
        with self._lock:
            stale = time.monotonic() - 5.0  # an unclaimed early ack must not match a reused mid later
            self._early = {m: t for m, t in self._early.items() if t > stale}
            room = MAX_IN_FLIGHT - len(self._in_flight)
            rows = self.spool.after(self._last_sent, room) if room > 0 else []
            generation = self._generation
        for row in rows:
            # never hold our lock inside publish(): paho holds its own while it calls on_publish
            info = self.client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # disconnected: the spool keeps it
            with self._lock:
                if generation != self._generation:
                    break  # reconnected meanwhile: the replay starts again from the oldest event
                self._last_sent = row.id
                self.counts["published"] += 1
                if self._early.pop(info.mid, None) is not None:
                    self._ack(row.id)
                else:
                    self._in_flight[info.mid] = row.id

    def _put(self, suffix: str, payload: dict | str, qos: int, retain: bool, kind: str) -> bool:
        """Spool an event; False when the spool refuses it (counted, and alarmed once per episode: straight to
        the broker where it is connected, since the spool has no room for the alarm)."""
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload, default=str).encode()
        try:
            self.spool.put(f"{self.prefix}/{suffix}", body, qos, retain, kind)
        except SpoolFull as exc:
            self.counts["refused_full"] += 1
            if not self._full_alarmed:
                self._full_alarmed = True
                self._say(f"ALARM spool_full: {exc}; new events are refused until there is room")
                self.client.publish(f"{self.prefix}/alarm", json.dumps(
                    {"kind": "spool_full", "message": str(exc), "ts": time.time()}), qos=1)
            return False
        if self._full_alarmed:
            self._full_alarmed = False
            self._say(f"spool takes events again ({self.counts['refused_full']} refused so far)")
        if self.spool.fill >= 0.8 and not self._near_full_alarmed and kind != "alarm":
            self._near_full_alarmed = True
            self.alarm("spool_near_full", f"spool at {100 * self.spool.fill:.0f}% of {self.spool.capacity} events")
        elif self.spool.fill < 0.7:
            self._near_full_alarmed = False
        with self._wake:
            self._wake.notify()
        return True

    # --- the Telemetry interface ---

    def inspection(self, event: dict) -> bool:
        return self._put("inspection", event, 1, False, "inspection")

    def stats(self, snapshot: dict) -> None:
        self._put("stats", snapshot | {"spool": {"events": len(self.spool), "dropped": self.spool.dropped},
                                       "mqtt": dict(self.counts)}, 0, True, "stats")

    def alarm(self, kind: str, message: str, **extra) -> None:
        self._put("alarm", {"kind": kind, "message": message, "ts": time.time(), **extra}, 1, False, "alarm")

    def info(self, inventory: dict) -> None:
        """The box's identity and what it runs, retained at `<prefix>/info`: published now when connected, and
        again on every connect (not spooled: only the newest matters)."""
        self._inventory = json.dumps(inventory).encode()
        if self.connected.is_set():
            self.client.publish(f"{self.prefix}/info", self._inventory, qos=1, retain=True)

    def on_command(self, handler: Callable[[str, dict], dict]) -> None:
        self._handler = handler

    def close(self, timeout: float = 5.0) -> None:
        """Flush the spool while connected (up to timeout), say offline, disconnect. What is left stays spooled."""
        deadline = time.monotonic() + timeout
        while len(self.spool) and self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._sender.join(timeout=5)
        self.spool.ack(self._acked)
        if self.connected.is_set():
            self.client.publish(f"{self.prefix}/status", "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        self.spool.close()
