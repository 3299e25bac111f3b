"""`qc demo --quick` end to end, as a newcomer would run it."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "qc", "demo", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n in range(1, 8):
        assert f"=== [{n}/7]" in proc.stdout
    assert "train epoch   1" in proc.stdout
    table = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines() if "  " in line}
    assert "parts inspected" in table and "escapes (defective parts passed)" in table
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert len(events) == 120 and len({e["id"] for e in events}) == 120
    assert re.search(r"^delivered to the collector\s+120$", proc.stdout, re.M)
    page = (out / "index.html").read_text()
    assert "run/eval/report.html" in page and "telemetry-report.html" in page
    assert (out / "run" / "eval" / "report.html").exists() and (out / "telemetry-report.html").exists()
    card = json.loads((out / "bundle" / "model.json").read_text())  # the default runs whole on the Edge TPU
    assert card["edgetpu"]["status"] in ("ready", "compiled") and "Edge TPU: ready" in proc.stdout
