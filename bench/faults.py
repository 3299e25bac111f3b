"""Faults a box meets, each scripted against a real `qc run` at 20 parts/s with telemetry to Mosquitto on
loopback: a full disk under the spool and the reject store, the live model overwritten in place, a bad bundle
seen by the file watcher, a huge image and a named pipe among the frames, a second copy of the box on the same
spool; and, as the baseline, the same run with no fault. Per fault, as JSON: parts, decisions, events_accepted (spooled; the events file marks the refused),
events_delivered (distinct ids the broker handed a subscriber), events_lost (accepted, never delivered),
duplicates, crashes (a `qc run` that died, rather than finished or refused to start).

    python -m bench.faults --bundle BUNDLE          # about 1.5 minutes; the disk-full fault needs root (tmpfs)

Goal: every part decided exactly once, 0 accepted events lost, 0 crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from bench.record import ROOT, emit
from firmware_io.mqtt.broker import LocalBroker

RATE_HZ, PARTS = 20, 200


class Delivered:
    """Every inspection event the broker hands a subscriber, by id."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.ids: list[str] = []
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-faults",
                                  clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("qc/+/+/inspection", 1)
        self.client.on_message = lambda c, u, m: self.ids.append(json.loads(m.payload)["id"])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _frames(folder: Path, n: int) -> Path:
    """Textured 160 x 120 frames, some with a dark spot."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(90, 170, (120, 160, 3), dtype=np.uint8), (5, 5), 0)
        if i % 4 == 0:
            cv2.circle(img, (int(rng.integers(20, 140)), int(rng.integers(20, 100))), 6, (20, 20, 20), -1)
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


def _config(work: Path, bundle: Path, frames: Path, broker_url: str, spool: Path, store: Path | None) -> Path:
    config = work / "edge.yaml"
    config.write_text(json.dumps({
        "bundle": str(bundle), "stats_interval_s": 0.5, "gpio": {"backend": "sim"}, "web": {"port": 0},
        "store": {"dir": str(store) if store else None},
        "source": {"kind": "folder", "path": str(frames), "loop": True, "rate_hz": RATE_HZ},
        "mqtt": {"enabled": True, "url": broker_url, "spool_path": str(spool), "spool_reserve_mb": 1.0,
                 "reconnect_min_s": 0.5, "reconnect_max_s": 1.0}}))
    return config


def _qc_run(config: Path, events: Path, parts: int = PARTS) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qc", "run", "--config", str(config), "--max-parts", str(parts),
                             "--events", str(events)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _lines(events: Path) -> list[dict]:
    return [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []


def _wait_lines(events: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(_lines(events)) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def fill_disk(disk: Path) -> Path:
    """Take every free byte of a filesystem (a file named filler)."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def huge_png(path: Path, side: int = 20_000) -> Path:
    """A gray PNG of side x side pixels, all zero: about 400 KB on disk, 400 MB decoded (written row by row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    z, row = zlib.compressobj(9), b"\0" * (side + 1)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def run_fault(name: str, bundle: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    frames = _frames(work / "frames", 40)
    live = work / "bundle"
    shutil.copytree(bundle, live)
    broker = LocalBroker(work / "broker").start()
    delivered = Delivered(broker.port)
    spool, store, events = work / "spool.sqlite", work / "rejects", work / "events.jsonl"
    disk = None
    if name == "disk_full":
        disk = work / "disk"
        disk.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)]).returncode:
            return {"skipped": "mounting a tmpfs needs root"}
        spool, store = disk / "spool.sqlite", disk / "rejects"
    if name == "huge_image":
        huge_png(frames / "007b.png")
    if name == "named_pipe":
        os.mkfifo(frames / "007b.png")
    config = _config(work, live, frames, broker.url, spool, store)
    crashes, procs = 0, []
    try:
        proc = _qc_run(config, events)
        procs.append(proc)
        _wait_lines(events, 40)
        if name == "disk_full":
            filler = fill_disk(disk)
            threading.Timer(3.0, filler.unlink).start()  # space returns after 3 s
        elif name == "model_overwritten":
            model = (live / "model.tflite").read_bytes()
            with open(live / "model.tflite", "r+b") as f:
                f.truncate(0)
                f.write(model[: len(model) // 3])
        elif name == "bad_reload":
            card = json.loads((live / "model.json").read_text())
            (live / "model.json").write_text(json.dumps(card | {"threshold": "abc"}))
        elif name == "second_process":
            second = _qc_run(config, work / "events2.jsonl")
            second.wait(timeout=60)
            crashes += second.returncode not in (0, 2)  # 2: refused to start, with its reason
        proc.wait(timeout=120)
        crashes += proc.returncode != 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        lines = _lines(events)
        accepted = {e["id"] for e in lines if "refused" not in e}
        deadline = time.monotonic() + 20
        while not accepted <= set(delivered.ids) and time.monotonic() < deadline:
            time.sleep(0.1)
        delivered.stop()
        broker.stop()
        if disk is not None:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    ids = delivered.ids
    return {"parts": PARTS, "decisions": len(lines), "events_accepted": len(accepted),
            "events_refused": sum("refused" in e for e in lines),
            "events_delivered": len(set(ids)), "events_lost": len(accepted - set(ids)),
            "duplicates": len(ids) - len(set(ids)), "crashes": crashes,
            "reasons": {r: sum(e["reason"] == r for e in lines) for r in sorted({e["reason"] for e in lines})}}


FAULTS = ("none", "disk_full", "model_overwritten", "bad_reload", "huge_image", "named_pipe", "second_process")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="a model bundle (e.g. the demo's)")
    p.add_argument("--only", choices=FAULTS, action="append", help="run only these faults")
    a = p.parse_args(argv)
    faults = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only or FAULTS:
            print(f"[bench.faults] {name} ...", file=sys.stderr, flush=True)
            faults[name] = run_fault(name, a.bundle, Path(tmp) / name)
    ran = [f for f in faults.values() if "skipped" not in f]
    result = {"module": "bench.faults", "benchmark": "faults", "rate_hz": RATE_HZ, "faults": faults,
              "meets_target": all(f["decisions"] == f["parts"] and f["events_lost"] == 0 and f["crashes"] == 0
                                  for f in ran)}
    return emit(result)


if __name__ == "__main__":
    main()
