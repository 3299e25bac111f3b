"""`qc report`: a self-contained HTML yield report from the collector's database (SQLite or PostgreSQL) for a
plant, a line or one box and a time range: yield over time, defect Pareto by class, reject reasons, latency
over time, per station."""

from __future__ import annotations

import html
import io
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from firmware_io.errors import FirmwareIOError  # noqa: E402
from firmware_io.mqtt.store import open_store  # noqa: E402
from firmware_io.pages import page, png_data_uri  # noqa: E402

__all__ = ["report"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return png_data_uri(buf.getvalue())


def report(db: str | Path, out: Path, bucket_s: float | None = None, line: str | None = None,
           station: str | None = None, since: float | None = None, until: float | None = None) -> dict:
    """The report of the parts of one line, one box or all (`line`, `station`) between `since` and `until`
    (Unix times) in a collector's database (a SQLite file or a postgresql:// URL)."""
    store = open_store(db, read_only=True)
    try:
        rows = store.inspections(line, station, since, until)
        alarms = store.alarm_counts(line, station, since, until)
    finally:
        store.close()
    if not rows:
        scope = " ".join(f"{k} {v}" for k, v in (("line", line), ("station", station)) if v)
        raise FirmwareIOError(f"{db}: no inspections recorded{' for ' + scope if scope else ''}"
                              f"{' in that time' if since or until else ''} yet")
    stations = sorted({r[0] for r in rows})
    ts = np.array([r[1] for r in rows], float)
    t0 = ts.min()
    span = max(1.0, ts.max() - t0)
    bucket = bucket_s or max(1.0, span / 30)
    figures = {}
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for st in stations:
        sel = np.array([r[0] == st for r in rows])
        bins = ((ts[sel] - t0) // bucket).astype(int)
        passed = np.array([r[3] == "pass" for r, s in zip(rows, sel) if s])
        xs = sorted(set(bins))
        ax.plot([x * bucket for x in xs], [100 * passed[bins == x].mean() for x in xs], marker="o", label=st)
    ax.set(xlabel="seconds since first part", ylabel="yield (% passed)", title="yield over time", ylim=(0, 102))
    ax.legend()
    ax.grid(alpha=0.3)
    figures["yield over time"] = _png(fig)
    defects = Counter(r[2] for r in rows if r[3] == "reject" and r[4] == "defect").most_common()
    if defects:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        counts = np.array([c for _, c in defects])
        ax.bar([str(d) for d, _ in defects], counts)
        ax2 = ax.twinx()
        ax2.plot(range(len(counts)), 100 * np.cumsum(counts) / counts.sum(), color="red", marker="o")
        ax2.set_ylim(0, 105)
        ax.set(title="defect Pareto (rejects by class)", ylabel="parts")
        ax2.set_ylabel("cumulative %")
        figures["defect Pareto"] = _png(fig)
    reasons = sorted(Counter(r[4] for r in rows if r[3] == "reject").items(), key=lambda kv: str(kv[0]))
    if reasons:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.bar([str(r) for r, _ in reasons], [c for _, c in reasons], color="tab:orange")
        ax.set(title="reject reasons", ylabel="parts")
        figures["reject reasons"] = _png(fig)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for st in stations:
        pts = [(r[1] - t0, r[5]) for r in rows if r[0] == st and r[5] is not None]
        if pts:
            ax.plot(*zip(*pts), ".", ms=3, label=st)
    ax.set(xlabel="seconds since first part", ylabel="capture to decision (ms)", title="latency over time")
    ax.legend()
    ax.grid(alpha=0.3)
    figures["latency over time"] = _png(fig)
    per_station = []
    for st in stations:
        sub = [r for r in rows if r[0] == st]
        lat = np.array([r[5] for r in sub if r[5] is not None] or [np.nan])
        per_station.append({"station": st, "parts": len(sub), "rejected": sum(r[3] == "reject" for r in sub),
                            "yield_pct": round(100 * sum(r[3] == "pass" for r in sub) / len(sub), 2),
                            "latency_p50_ms": round(float(np.nanpercentile(lat, 50)), 2),
                            "latency_p99_ms": round(float(np.nanpercentile(lat, 99)), 2)})
    table = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in s.values()) + "</tr>"
                    for s in per_station)
    head = "".join(f"<th>{k}</th>" for k in per_station[0])
    alarm_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{n}</td></tr>" for k, n in alarms) or \
        "<tr><td colspan=2>none</td></tr>"
    imgs = "".join(f"<figure><img src='{uri}'><figcaption>{html.escape(k)}</figcaption></figure>"
                   for k, uri in figures.items())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page("Line telemetry", f"""<h1>Line telemetry</h1><p>{len(rows)} parts from {len(stations)} station(s) over {span:.0f} s.</p>
<h2>Per station</h2><table><tr>{head}</tr>{table}</table>
<h2>Alarms</h2><table><tr><th>kind</th><th>count</th></tr>{alarm_rows}</table>
<h2>Figures</h2>{imgs}"""))
    return {"report": str(out), "parts": len(rows), "stations": per_station, "alarms": dict(alarms)}
