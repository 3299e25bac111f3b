"""Write docs/benchmarks.md from the saved results in bench/results/*.json (`make bench` saves them):
one table per benchmark with its figures, the baseline measured in the same run, the target, and the
command, machine, date and commit that produced it. No figure is typed by hand; bench/results/<name>.md,
where present, says in prose what limits a target that is not met.

    python -m bench.docs            # rewrite docs/benchmarks.md
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.record import RESULTS, ROOT

OUT = ROOT / "docs" / "benchmarks.md"


def _pct(x) -> str:
    return f"{100 * x:.1f} %"


def _synth(r):
    return (f"{r['images_per_s']:,} images/s at {r['size']} px on one core",
            f"PNG decode {r['baseline_png_decode_per_s']:,}/s", f">= {r['target_images_per_s']} images/s")


def _reject_timing(r):
    g, n = r["gate"], r["baseline_naive_sleep_loop"]
    return (f"{r['parts']} parts at {r['rate_parts_s']:.0f}/s: fired-vs-scheduled p50 {g['p50_ms']:.2f} ms, "
            f"p99 {g['p99_ms']:.2f} ms, max {g['max_ms']:.1f} ms; {g['missed']} missed, {g['duplicates']} duplicated",
            f"sleep loop: p50 {n['p50_ms']:.0f} ms", f"p99 <= {r['target']['p99_ms']} ms, none missed")


def _telemetry(r):
    o = r["outage"]
    return (f"{r['events']:,} events ({r['broker']}): spooled (fsync per event) {r['spooled_events_per_s']:,}/s, "
            f"cost {_pct(r['spool_cost'])}; `spool_sync: normal` {r['spooled_sync_normal_events_per_s']:,}/s, cost "
            f"{_pct(r['spool_cost_sync_normal'])}; {o['sent_while_down']} sent during an outage, "
            f"{o['delivered_unique']} delivered",
            f"paho direct, no spool: {r['baseline_paho_direct_events_per_s']:,}/s",
            f"cost <= {_pct(r['target']['spool_cost_max'])}, >= {r['target']['spooled_events_per_s_min']}/s")


def _export(r):
    b = r["mobilenet_v2_1.0_224"]
    text = (f"MobileNetV2 1.0 at 224: int8 {b['int8_bytes'] / 2**20:.2f} MiB vs float32 "
            f"{b['float32_bytes'] / 2**20:.2f} MiB ({b['size_ratio']}x; per tensor {b['size_ratio_per_tensor']}x); "
            f"int8 {b['latency_ms']['int8_litert']:.2f} ms per frame vs float32 .tflite "
            f"{b['latency_ms']['float32_litert']:.2f} ms ({b['speedup_int8_vs_float32_tflite']}x)")
    if "run" in r:
        runs = "; ".join(f"{k}: F1 {v['f1_float']:.3f} -> {v['f1_int8']:.3f} (drop {v['f1_drop_points']:.2f} points)"
                         for k, v in r["run"].items() if isinstance(v, dict) and "f1_int8" in v)
        text += f". Trained run {r['run']['model']}: {runs}"
    return (text, f"Keras `predict` one frame {b['latency_ms']['keras_predict_one_frame']:.1f} ms "
            f"({b['speedup_int8_vs_keras_predict']}x slower)", "size >= 3.5x, >= 1.8x float .tflite, >= 25x Keras"
            + ("; F1 drop <= 0.5 point" if "run" in r else ""))


def _train_quality(r):
    s, rec = r["synthetic"], r["recipe"]
    said = f"{rec['steps']} steps" if "steps" in rec else f"{rec['input_size']} px, {rec['epochs']} epochs"
    text = (f"default recipe ({rec['arch']} {rec['alpha']}, {said}) on "
            f"`qc synth --count 3000 --seed 1`: binary F1 {s['binary_f1']}, ROC AUC {s['roc_auc']}, at the threshold "
            f"for 99 % val recall test recall {s['test_defect_recall_at_threshold']} with false rejects "
            f"{_pct(s['test_false_reject_rate_at_threshold'])}, pointing game {s['pointing_game']}, {s['train_wall_s']:.0f} s")
    if "magnetic_tile" in r:
        t = r["magnetic_tile"]
        text += (f". Magnetic tiles ({'no flags' if 'steps' in rec else 'the few-photos recipe'}): accuracy {t['accuracy']}, macro F1 {t['macro_f1']}, "
                 f"ROC AUC {t['roc_auc']}, test recall {t['test_defect_recall_at_threshold']} with false rejects "
                 f"{_pct(t['test_false_reject_rate_at_threshold'])} at the threshold, {t['train_wall_s']:.0f} s")
    return text, "reject everything: recall 1, false rejects 100 %", (
        "F1 >= 0.98, recall >= 0.99 with false rejects <= 3 %, pointing game >= 0.8, <= 600 s; tiles accuracy >= "
        + ("0.97, recall >= 0.99 with false rejects <= 5 %" if "steps" in rec else "0.95"))


def _edge_pipeline(r):
    c, line, st, ra = r["pipeline_capacity"], r["pipeline_at_line_rate"], r["stages_alone_per_s"], r["ratios"]
    return (f"{r['model']} ({r['input'][1]} px), {r['workers']} workers: capacity {c['inspected_per_s']:,} parts/s "
            f"({ra['capacity_vs_slowest_stage']} x the slowest stage, {ra['capacity_vs_naive']} x naive); at "
            f"{line['offered_per_s']:,}/s: p50 {line['latency_p50_ms']} ms, p99 {line['latency_p99_ms']} ms, "
            f"{line['not_inspected']} not inspected; peak RSS {r['peak_rss_mb']} MB." + _backbones(r) + _tiles(r),
            f"naive loop {r['naive_sequential_loop_per_s']:,}/s; stages alone: decode {st['read_bmp_decode']:,}/s, "
            f"resize {st['preprocess']:,}/s, invoke {st['interpreter_invoke']:,}/s; the naive loop in processes "
            f"at the same rate: p99/p50 {r['naive_loop_in_processes_at_line_rate']['p99_over_p50']}",
            "capacity >= 0.8 x slowest stage and >= 1.3 x naive; every part inspected and p99 <= 2 x p50")


def _tiles(r):
    t = r.get("per_frame_whole_and_tiles")
    if not t:
        return ""
    return " Per frame, the whole frame resized against its {} px tiles: ".format(t["tile"]) + ", ".join(
        f"{k} {v['whole_frame_ms']} ms against {v['tiles']} tiles {v['tiles_ms']} ms ({v['tiles_over_whole']} x)"
        for k, v in t.items() if isinstance(v, dict)) + "."


def _backbones(r):
    """`qc bench`'s last figure, where it ran with TensorFlow: the default backbone's invoke beside the previous."""
    b = r.get("backbones_int8_invoke_cpu", {})
    if "int8_invoke_ms" not in b:
        return ""
    ms = b["int8_invoke_ms"]
    return (f" Int8 invoke on the CPU, 1 thread, {b['input_size']} px, untrained: the default {b['default']} "
            f"{ms[b['default']]} ms, the previous default {b['previous_default']} {ms[b['previous_default']]} ms "
            f"({b['previous_over_default']} x).")


def _seeds(r, data, arch):
    m, w = r[data][arch]["mean"], r[data][arch]["worst"]
    return (f"{arch}: accuracy {m['accuracy']} (worst {w['accuracy']}), binary F1 {m['binary_f1']} (worst "
            f"{w['binary_f1']}), ROC AUC {m['roc_auc']}, test recall {m['test_defect_recall_at_threshold']} with false "
            f"rejects {_pct(m['test_false_reject_rate_at_threshold'])} (worst {_pct(w['test_false_reject_rate_at_threshold'])}), "
            f"{m['train_wall_s']:.0f} s")


def _default_backbone(r):
    new, old = r["default"], r["previous_default"]
    data = [d for d in ("synthetic", "magnetic_tile") if d in r]
    return ("; ".join(f"{d}, mean of seeds {r['seeds']}: {_seeds(r, d, new)}" for d in data),
            "; ".join(f"{d}: {_seeds(r, d, old)}" for d in data if old in r[d]),
            "the default meets the synthetic targets on every seed (F1 >= 0.98, recall >= 0.99 with false rejects "
            "<= 3 %, pointing game >= 0.8); on the tiles its mean accuracy and ROC AUC are at least the previous "
            "default's")


def _any_dataset(r):
    data = [d for d in ("magnetic_tile", "synthetic") if d in r]
    baseline = "reject everything: recall 1, false rejects 100 %"
    if "whole-photos" in r.get("magnetic_tile", {}):
        baseline += f"; magnetic_tile, --tiles off: {_seeds(r, 'magnetic_tile', 'whole-photos')}"
    targets = {"magnetic_tile": "tiles accuracy >= 0.97, recall >= 0.99 with false rejects <= 5 %",
               "synthetic": "the synthetic targets (F1 >= 0.98, recall >= 0.99 with false rejects <= 3 %, pointing "
                            "game >= 0.8)"}
    return ("; ".join(f"{d}, no flags, mean of seeds {r['seeds']}: {_seeds(r, d, 'default')}" for d in data),
            baseline, "on every seed: " + "; ".join(targets[d] for d in data)
            + ("" if "magnetic_tile" in r else " (the magnetic tiles not measured in this run)"))


def _good_only(r):
    def figures(d):
        m, w = r[d]["mean"], r[d]["worst"]
        return (f"{d} ({' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in r[d]['settings'].items()) or 'no flags'}"
                f"), mean of seeds {r['seeds']}: ROC AUC {m['roc_auc']} (worst {w['roc_auc']}), recall at 1 % false "
                f"rejects {m['recall_at_1pct']}, at 3 % {m['recall_at_3pct']} (worst {w['recall_at_3pct']}), int8 ROC "
                f"AUC {m['int8_roc_auc']}; at the threshold from good photos: recall "
                f"{m['test_defect_recall_at_threshold']}, false rejects {_pct(m['test_false_reject_rate_at_threshold'])}"
                f"; {m['train_wall_s']:.0f} s a run")
    data = [d for d in ("magnetic_tile", "synthetic") if d in r]
    b = r["baseline"]
    return ("; ".join(figures(d) for d in data),
            f"a score that knows nothing: ROC AUC {b['roc_auc']}, recall at 1 % / 3 % false rejects "
            f"{b['recall_at_1pct']} / {b['recall_at_3pct']}",
            f"on every seed: ROC AUC >= {r['goals']['roc_auc']}, recall >= {r['goals']['recall_at_3pct']} at 3 % false "
            f"rejects, int8 within {r['goals']['int8_auc_drop_max']} AUC of float ("
            + "; ".join(f"{d}: {'met' if r[d]['meets_goals'] else 'not met'}" for d in data) + ")")


def _collector(r):
    e = r["events_per_s"]
    return (f"{r['events']} inspection events (QoS 1) from 50 stations' topics, stored: one collector on PostgreSQL "
            f"{e['postgresql_one']:.0f} events/s, on SQLite {e['sqlite_one']:.0f}/s; two in a share group on "
            f"PostgreSQL {e['postgresql_two_shared']:.0f}/s ({r['two_over_one']} x one)",
            f"mosquitto_sub to /dev/null, the same publisher: {e['mosquitto_sub']:.0f} events/s",
            f"one collector on PostgreSQL keeps up with 50 stations at 20 parts/s ({r['goal_events_per_s']:.0f} events/s)")


def _camera(r):
    bare, ours = r["bare_aravis_loop"], r["qc_aravis_source"]
    return (f"{r['camera']}, {r['format']}, {r['requested_fps']} frames/s asked: the Aravis source delivered "
            f"{ours['frames_per_s']} frames/s ({r['rate_vs_bare']} x the bare loop), {ours['cpu_ms_per_frame']} ms "
            "of process CPU per frame (taken from the driver, stamped, converted)",
            f"a bare Aravis loop (pop a buffer, push it back): {bare['frames_per_s']} frames/s, "
            f"{bare['cpu_ms_per_frame']} ms CPU per frame", f"at least {r['target']} x the bare loop's rate")


def _faults(r):
    def line(name, f):
        if "skipped" in f:
            return f"{name}: not run ({f['skipped']})"
        return (f"{name}: {f['decisions']} of {f['parts']} parts decided, {f['events_accepted']} events accepted "
                f"({f['events_refused']} refused), {f['events_lost']} lost, {f['duplicates']} duplicates, "
                f"{f['crashes']} crashes")
    faults = {k: v for k, v in r["faults"].items() if k != "none"}
    return ("; ".join(line(k, v) for k, v in faults.items()), line("no fault", r["faults"]["none"]),
            "every part decided exactly once, 0 accepted events lost, 0 crashes")


def _beside(r, serving: str, off: str, them: str):
    c, lat = r["capacity_per_s"], r["latency_ms"]
    return (f"{serving}: {c['on']} parts/s ({r['capacity_on_vs_off']} x), latency p99 {lat['on']['p99']} ms",
            f"{off}: {c['off']} parts/s, latency p99 {lat['off']['p99']} ms",
            f"capacity with {them} at least {r['target']} x without")


def _station(r):
    return _beside(r, f"station serving a client polling state and frame at {r['poll_hz']:g} Hz", "station off",
                   "the station")


def _plc(r):
    cpu = {k: 100 * sum(p["cpu_share"][k] for p in r["polls_answered"]) / len(r["polls_answered"])
           for k in ("opcua", "modbus", "plc_process")}
    polled = ", ".join(f"{p['opcua']}/{p['modbus']}" for p in r["polls_answered"])
    return _beside(r, f"OPC UA and Modbus TCP servers, each polled at {r['poll_hz']:g} Hz by a client in a process "
                   f"of its own (polls answered per run, OPC UA/Modbus: {polled}); CPU, % of one core: OPC UA "
                   f"server {cpu['opcua']:.1f}, Modbus server {cpu['modbus']:.1f}, the clients {cpu['plc_process']:.1f}; "
                   f"parts/s per run on {r['capacity_per_run']['on']}, off {r['capacity_per_run']['off']}",
                   "servers off", "the servers")


def _wheels(r):
    boxes = r["boxes"]
    return ("; ".join(f"{k} (Python {b['python']}, glibc {b['glibc']}): {len(b['wheels'])} binary wheels"
                      f", {b['megabytes']} MB"
                      + ("" if b["ok"] else f", failed: {' '.join(b['errors'])[:200]}") for k, b in boxes.items()),
            "pip's own resolution with `--only-binary=:all:` and every manylinux tag up to the box's glibc",
            "every dependency of the box a binary wheel for aarch64")


FORMAT = {"synth": _synth, "reject_timing": _reject_timing, "telemetry": _telemetry, "export": _export,
          "train_quality": _train_quality, "default_backbone": _default_backbone, "edge_pipeline": _edge_pipeline,
          "any_dataset": _any_dataset, "good_only": _good_only, "collector": _collector,
          "camera_aravis": _camera,
          "wheels": _wheels, "faults": _faults, "station": _station, "plc": _plc}


def render(results: list[dict]) -> str:
    lines = ["# Benchmarks", "",
             "Current figures only, written by `python -m bench.docs` from the results `make bench` saves in "
             "`bench/results/`. Each benchmark measures its baseline in the same run; the row says what produced it. "
             "Recipes tried and dropped are in [experiments.md](experiments.md).", ""]
    for r in sorted(results, key=lambda r: list(FORMAT).index(r["benchmark"]) if r["benchmark"] in FORMAT else 99):
        if r["benchmark"] not in FORMAT:
            continue
        text, baseline, target = FORMAT[r["benchmark"]](r)
        met = r.get("meets_targets", r.get("meets_target"))
        rec = r["recorded"]
        lines += [f"## {r['benchmark']}", "",
                  "| | |", "| --- | --- |",
                  f"| result | {text} |", f"| baseline, same run | {baseline} |",
                  f"| target | {target}: **{'met' if met else 'not met'}** |",
                  f"| command | `{rec['command']}` |", f"| machine | {rec['machine']} |",
                  f"| date, commit | {rec['date']}, {rec['commit']} |", ""]
        note = Path(RESULTS) / f"{r['benchmark']}.md"  # what the figures mean, where a target is not met
        if note.exists():
            lines += [note.read_text().strip(), ""]
    return "\n".join(lines)


def main() -> None:
    results = [json.loads(p.read_text()) for p in sorted(Path(RESULTS).glob("*.json"))]
    OUT.write_text(render(results))
    print(f"{OUT}: {len(results)} benchmark(s)")


if __name__ == "__main__":
    main()
