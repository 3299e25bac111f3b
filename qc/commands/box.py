"""`qc run`, `qc config`, `qc cameras`, `qc review` and `qc bench`: the camera box."""

from __future__ import annotations

from pathlib import Path

from qc.registry import command


def _run_args(p):
    p.add_argument("--config", type=Path, help="edge YAML (see deploy/edge.example.yaml)")
    p.add_argument("--bundle", type=Path, help="model bundle folder (overrides the config)")
    p.add_argument("--source", help="folder, video file, camera index, /dev/videoN or rtsp:// URL")
    p.add_argument("--rate", type=float, help="folder/video source: parts per second")
    p.add_argument("--gpio", choices=["auto", "gpiod", "rpi", "sim"], help="GPIO backend")
    p.add_argument("--mqtt", help="broker URL, e.g. mqtt://127.0.0.1 (turns telemetry on)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--max-parts", type=int, help="stop after this many parts")
    p.add_argument("--events", type=Path, help="also append every inspection event to this JSONL file")


def _source_kind(src: str) -> str:
    if src.isdigit() or src.startswith("/dev/video"):
        return "camera"
    if "://" in src:
        return "stream"
    return "folder" if Path(src).is_dir() else "video"


def edge_config(a):
    """The config file with the command line's overrides."""
    from edge.config import load_config

    overrides = {}
    if a.bundle:
        overrides["bundle"] = str(a.bundle)
    if a.source:
        overrides.update({"source.path": a.source, "source.kind": _source_kind(a.source)})
    if a.rate:
        overrides["source.rate_hz"] = a.rate
    if a.gpio:
        overrides["gpio.backend"] = a.gpio
    if a.mqtt:
        overrides.update({"mqtt.url": a.mqtt, "mqtt.enabled": True})
    return load_config(a.config, overrides)


@command("run", "inspect parts on a camera box: frames -> int8 model -> pass/reject -> gate, MQTT, stats, and the "
         "station's web page (web.port, 8080)", _run_args)
def run(a):
    import signal

    from edge.app import build_runtime, start_servers

    cfg = edge_config(a)
    runtime = build_runtime(cfg, events=a.events)
    try:
        servers = start_servers(runtime, cfg)
    except Exception as exc:  # a port in use, no OPC UA users: said where telemetry reaches, then exit 2
        runtime.telemetry.alarm("startup_failed", str(exc))
        runtime.telemetry.close()
        raise
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runtime.stop_event.set())
    try:
        return runtime.run(duration=a.duration, max_parts=a.max_parts)
    finally:
        for server in servers:
            server.stop()


def _config_args(p):
    p.add_argument("action", choices=["check"], help="check: validate without running")
    p.add_argument("file", type=Path, help="edge YAML file")
    p.add_argument("--bundle", type=Path, help="check this bundle in place of the config's")


def _writable(folder: Path) -> bool:
    """The folder, or the nearest one above it that exists (where it would be made), is writable."""
    import os

    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK)


@command("config", "validate an edge config file and what it points to (bundle, TLS files, writable folders); a "
         "typo or bad value names the key", _config_args)
def config(a):
    from edge import cameras
    from edge.bundle import load_bundle
    from edge.config import load_config
    from edge.errors import EdgeError

    cfg = load_config(a.file, {"bundle": str(a.bundle)} if a.bundle else None)
    if cfg.source.kind in cameras.NEEDS:  # the camera's library, named with what to install when missing
        cameras.require(cfg.source.kind)
    load_bundle(cfg.bundle)  # a missing or broken bundle, named
    m = cfg.mqtt
    for key in ("ca_file", "cert_file", "key_file", "password_file") if m.enabled else ():
        if (file := getattr(m, key)) is not None and not Path(file).is_file():
            raise EdgeError(f"{a.file}: mqtt.{key} {file}: no such file")
    folders = {"store.dir": cfg.store.dir, "mqtt.spool_path": m.spool_path.parent if m.enabled else None,
               "opcua.pki_dir": cfg.opcua.pki_dir if cfg.opcua.enabled else None}
    if cfg.opcua.enabled or cfg.modbus.enabled:
        from edge.app import plc_servers

        plc_servers(cfg)  # the plc extra installed, the OPC UA users file readable
    for key, folder in folders.items():
        if folder is not None and not _writable(Path(folder)):
            raise EdgeError(f"{a.file}: {key} {folder}: not writable by this user")
    return f"{a.file}: ok (bundle {cfg.bundle}, source {cfg.source.kind} {cfg.source.path!r}, gpio {cfg.gpio.backend})"


@command("cameras", "list the cameras this box can open: GigE/USB3 Vision (Aravis), /dev/video*, Pi cameras, "
         "GStreamer camera sources, with model and serial (JSON)")
def cameras(a):
    from edge.cameras import discover

    return discover()


def _review_args(p):
    p.add_argument("store", type=Path, help="reject store folder (store.dir of the edge config)")
    p.add_argument("--into", type=Path, required=True, help="dataset folder to file the frames into")
    p.add_argument("--label", help="class for every frame")
    p.add_argument("--labels", type=Path, help='JSON {"<frame id>": "<class>"} for frame-by-frame labels')
    p.add_argument("--split", default="train", help="split folder to use when the dataset has splits")


@command("review", "file stored reject frames into a dataset's class folders, for `qc train --init-from`",
         _review_args)
def review(a):
    from edge.store import review as run_review

    return run_review(a.store, a.into, a.label, a.labels, a.split)


def _bench_args(p):
    p.add_argument("--bundle", type=Path, help="model bundle to measure (the pipeline benchmark)")
    p.add_argument("--source", choices=["aravis"], help="measure a camera source instead: aravis, against a bare "
                   "Aravis loop (Debian's fake GigE Vision camera unless --camera)")
    p.add_argument("--camera", help="with --source aravis: a camera id from `qc cameras`")
    p.add_argument("--station", action="store_true", help="with --bundle: capacity with the station serving a "
                   "client that polls it at 5 Hz, against the station off")
    p.add_argument("--plc", action="store_true", help="with --bundle: capacity with the OPC UA and Modbus servers "
                   "each polled by a client at 10 Hz, against both off")
    p.add_argument("--frames", type=int, default=200, help="frames per stage measurement")
    p.add_argument("--threads", type=int, help="LiteRT CPU threads per interpreter (default: as qc run)")
    p.add_argument("--workers", type=int, help="pipeline workers (default: as qc run)")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="how long each pipeline run is measured, after a 1 s warm-up")


@command("bench", "benchmark the edge pipeline on 640x480 frames against its stages and a naive loop; with the "
         "train extra, the default backbone's invoke time beside the previous default's; or a camera source "
         "against its bare driver loop (JSON)", _bench_args)
def bench(a):
    import sys

    from bench.record import emit
    from edge.errors import EdgeError

    command = "qc " + " ".join(sys.argv[1:])
    if a.source == "aravis":
        from bench.camera import run_camera_benchmark

        emit(run_camera_benchmark(a.camera, seconds=a.seconds), command)
    elif a.bundle is None:
        raise EdgeError("--bundle is needed (or --source aravis)")
    elif a.station:
        from bench.station import run_station_benchmark

        emit(run_station_benchmark(a.bundle, seconds=a.seconds), command)
    elif a.plc:
        from bench.plc import run_plc_benchmark

        emit(run_plc_benchmark(a.bundle, seconds=a.seconds), command)
    else:
        from bench.edge_pipeline import run_benchmark

        emit(run_benchmark(a.bundle, a.frames, a.threads, a.seconds, a.workers), command)


def _secret(name: str, what: str) -> tuple[str, str]:
    """A new random secret for `name`, and its users-file line (which keeps only its sha256)."""
    import re
    import secrets

    from edge.errors import EdgeError
    from edge.users import secret_line

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise EdgeError(f"{what} name {name!r}: letters, digits, _ . - only")
    secret = secrets.token_urlsafe(24)
    return secret, secret_line(name, secret)


def _station_args(p):
    p.add_argument("action", choices=["token"], help="token: a new operator token")
    p.add_argument("name", help="the operator's name, as the review sidecars will record it")


@command("station", "make an operator's token for the station's controls and review: prints the token (for the "
         "operator) and the line for web.operators_file (which keeps only its sha256)", _station_args)
def station(a):
    token, line = _secret(a.name, "operator")
    return {"operator": a.name, "token": token, "operators_file_line": line}


def _opcua_args(p):
    p.add_argument("action", choices=["user"], help="user: a new OPC UA user with a random password")
    p.add_argument("name", help="the user name the PLC or SCADA client logs in with")


@command("opcua", "make an OPC UA user: prints the password (for the PLC's or SCADA's connection settings) and the "
         "line for opcua.users_file (which keeps only its sha256)", _opcua_args)
def opcua(a):
    password, line = _secret(a.name, "user")
    return {"user": a.name, "password": password, "users_file_line": line}
