"""`qc demo`: the whole system end to end on embedded defaults, in one process.

synth -> train -> evaluate -> export -> embedded broker + collector -> `qc run` on a held-out conveyor
sequence with the simulated GPIO -> telemetry report -> demo-output/index.html and a summary table.
Every thread it starts is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import html
import json
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from edge.decision import GOOD
from firmware_io.pages import page

RECIPES = {
    # count, size, training overrides, parts on the conveyor, part rate
    "full": dict(count=3000, size=128, train=dict(), parts=400, rate=20.0),  # the whole default recipe
    "quick": dict(count=400, size=64, train=dict(input_size=64, epochs=3, patience=3), parts=120, rate=40.0),
}


def step(n: int, title: str) -> None:
    print(f"\n=== [{n}/7] {title} ===", flush=True)


def _conveyor(data: Path, out: Path, parts: int, seed: int) -> dict[str, str]:
    """The held-out test images in a shuffled order, looped to `parts` frames; returns name -> true class."""
    files = sorted((data / "test").glob("*/*.png"))
    order = np.random.default_rng(seed).permutation(len(files))
    out.mkdir(parents=True)
    truth = {}
    for i in range(parts):
        src = files[order[i % len(files)]]
        name = f"{i:05d}_{src.parent.name}.png"
        shutil.copy(src, out / name)
        truth[name] = src.parent.name
    return truth


def _gallery(store: Path, limit: int = 48) -> str:
    tiles = []
    for box in sorted(store.glob("*_box.png"))[-limit:]:
        event = json.loads(box.with_name(box.name.replace("_box.png", ".json")).read_text())
        tiles.append(f"<figure><img src='{box.relative_to(store.parent)}' width=160><figcaption>#{event['seq']} "
                     f"{html.escape(event['label'])} {event['score']:.2f} ({html.escape(event['reason'])})"
                     f"</figcaption></figure>")
    return "".join(tiles) or "<p>no rejects with a box</p>"


def run_demo(out: Path, quick: bool = False, seed: int = 1) -> dict:
    from edge.app import build_runtime, start_servers
    from edge.config import validate_config
    from firmware_io.mqtt.broker import EmbeddedBroker, free_port
    from firmware_io.mqtt.collector import Collector
    from firmware_io.mqtt.config import MQTTConfig
    from firmware_io.mqtt.report import report
    from training.config import TARGET_RECALL
    from training.evaluate import evaluate
    from training.export import export
    from training.synth import SynthConfig, generate
    from training.train import TrainConfig, train

    recipe = RECIPES["quick" if quick else "full"]
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data, run, bundle = out / "data", out / "run", out / "bundle"
    t_start = time.monotonic()

    step(1, f"synthetic dataset: {recipe['count']} images at {recipe['size']} px")
    from tqdm import tqdm

    with tqdm(total=recipe["count"], desc="synth", unit="img", file=sys.stdout) as bar:
        generate(data, SynthConfig(count=recipe["count"], seed=seed, size=recipe["size"]),
                 progress=lambda done, total: bar.update(done - bar.n))

    cfg = TrainConfig(data=data, out=run, seed=seed, **recipe["train"])
    step(2, "train: the recipe chosen from the data (printed first), then one line per epoch")
    train(cfg)

    step(3, "evaluate: metrics, a reject threshold for 99 % defect recall, report")
    m = evaluate(run, data, target_recall=TARGET_RECALL)
    print(f"test accuracy {m['accuracy']:.4f}, binary F1 {m['binary_argmax']['f1']:.4f}, threshold "
          f"{m['threshold']['value']:.4f}: recall {m['threshold']['test']['recall']:.4f}, false rejects "
          f"{100 * m['threshold']['test']['false_reject_rate']:.2f}%", flush=True)

    step(4, "export to an int8 bundle, check it against float and against the Edge TPU's operator table")
    exp = export(run, bundle, allow_drop=True, edgetpu=True)  # one bundle for a Pi, a Jetson and a Coral
    print(f"int8 model {exp['size_bytes'] / 1024:.0f} KiB, F1 drop {100 * exp['metrics']['drop']['f1']:.2f} points, "
          f"Edge TPU: {exp['edgetpu']['status']}", flush=True)

    with ExitStack() as stack:
        step(5, "start the embedded MQTT broker and the collector")
        broker = stack.enter_context(EmbeddedBroker(free_port()))
        mqtt_cfg = MQTTConfig(url=broker.url, spool_path=out / "spool.sqlite")
        collector = Collector(mqtt_cfg, out / "telemetry.sqlite").start()
        stack.callback(collector.stop)
        print(f"broker {broker.url}, collector -> {out / 'telemetry.sqlite'}", flush=True)

        step(6, f"inspect {recipe['parts']} parts on a simulated conveyor at {recipe['rate']:.0f} parts/s")
        truth = _conveyor(data, out / "conveyor", recipe["parts"], seed)
        cfg = validate_config({
            "line": "demo", "station": "cam1", "bundle": str(bundle), "stats_interval_s": 2,
            "source": {"kind": "folder", "path": str(out / "conveyor"), "rate_hz": recipe["rate"]},
            "store": {"dir": str(out / "rejects"), "max_files": 1000},
            "gpio": {"backend": "sim", "gate": {"delay_ms": 400, "pulse_ms": 20, "min_gap_ms": 5}},
            "mqtt": mqtt_cfg.model_dump() | {"enabled": True}, "web": {"port": 0}})
        events_path = out / "events.jsonl"
        runtime = build_runtime(cfg, events=events_path)
        station, = start_servers(runtime, cfg)
        stack.callback(station.stop)
        print(f"the live station while the conveyor runs: {station.url}", flush=True)
        final = runtime.run()
        deadline = time.monotonic() + 20
        while collector.counts["inspections"] < recipe["parts"] and time.monotonic() < deadline:
            time.sleep(0.1)

    step(7, "telemetry report and the demo page")
    rep = report(out / "telemetry.sqlite", out / "telemetry-report.html")
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    defective = [truth[Path(e["source"]).name] != GOOD for e in events]
    rejected = [e["decision"] == "reject" for e in events]
    lat = final["latency_ms"].get("end_to_end", {})
    summary = {
        "parts inspected": len(events),
        "rejected": sum(rejected),
        "escapes (defective parts passed)": sum(d and not r for d, r in zip(defective, rejected)),
        "false rejects (good parts rejected)": sum(r and not d for d, r in zip(defective, rejected)),
        "defective parts on the line": sum(defective),
        "reject-gate timing error p99 (ms)": final["gate"]["timing"].get("p99_ms"),
        "fps": final["fps"],
        "latency p50 / p99 (ms)": f"{lat.get('p50')} / {lat.get('p99')}",
        "delivered to the collector": rep["parts"],
        "wall time (s)": round(time.monotonic() - t_start, 1),
    }
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    (out / "index.html").write_text(page("qc demo", f"""<h1>qc demo: a simulated inspection line</h1><table>{rows}</table>
<h2>Reports</h2><ul><li><a href="run/eval/report.html">model evaluation</a></li>
<li><a href="telemetry-report.html">line telemetry</a></li></ul>
<h2>Rejected parts with their defect boxes</h2>{_gallery(out / 'rejects')}"""))
    width = max(len(k) for k in summary)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in summary.items()))
    print(f"\nopen {out / 'index.html'}", flush=True)
    return summary
