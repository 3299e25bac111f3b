"""The operator's station against a running inspection: a real uvicorn server on loopback, driven over HTTP
(the live state, the SSE feed, the frame, /metrics parsed by prometheus-client, the gallery), its controls
and review behind operators' tokens, and what a hostile request gets."""

import json
import os
import shutil
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.errors import EdgeError
from edge.station import Station, load_operators, token_line
from edge.store import review

from .test_mqtt import wait_for
from .test_pipeline import frames, make_runtime


@pytest.fixture
def line(bundle_dir, synth32, tmp_path, monkeypatch):
    """A runtime rejecting every part of a 20 parts/s folder source, with its station on a free port; the
    operators file names `alice`."""
    monkeypatch.delenv("QC_WEB_TOKEN", raising=False)
    operators = tmp_path / "operators"
    operators.write_text(token_line("alice", "alice-secret") + "\n")
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=40), tmp_path, decision__threshold=0.0,
                           source__rate_hz=20, web__port=0)
    station = Station(rt, rt.cfg.web, load_operators(operators)).start()
    runner = threading.Thread(target=rt.run, kwargs={"on_stats": lambda line: None})
    runner.start()
    with httpx.Client(base_url=station.url.rstrip("/"), timeout=10) as http:
        yield rt, tel, station, http
    rt.stop_event.set()
    runner.join(30)
    station.stop()


def test_the_live_state_feed_frame_and_metrics_follow_the_parts(line):
    rt, tel, station, http = line
    assert wait_for(lambda: http.get("/api/state").json()["counts"]["parts"] >= 10, timeout=30)
    page = http.get("/")
    assert page.status_code == 200 and "EventSource" in page.text
    state = http.get("/api/state").json()
    assert state["model"]["sha256"] == rt.bundle.sha256 and state["latest"]["decision"] == "reject"
    with http.stream("GET", "/api/events") as feed:  # server-sent events; left mid-stream: the rest goes on
        line1 = next(line for line in feed.iter_lines() if line.startswith("data: "))
    assert json.loads(line1[6:])["counts"]["parts"] >= 10
    jpeg = http.get("/frame.jpg")
    assert jpeg.status_code == 200 and jpeg.content[:2] == b"\xff\xd8"
    assert http.get("/healthz").json() == {"ok": True}
    rt.stop_event.set()
    wait_for(lambda: not rt.running.is_set() or len(tel.inspections) == 40, timeout=30)
    time.sleep(0.5)
    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    parts = {(s.labels["decision"], s.labels["reason"]): s.value for s in families["qc_parts"].samples
             if s.name == "qc_parts_total"}
    counts = rt.stats.snapshot()["counts"]
    assert sum(parts.values()) == counts["parts"] == len(tel.inspections)
    assert parts == {("reject", r): n for r, n in counts["reason"].items()}
    latency = [s for s in families["qc_latency_seconds"].samples if s.name == "qc_latency_seconds_count"
               and s.labels["stage"] == "end_to_end"]
    assert latency[0].value == counts["parts"]
    assert [s.labels["sha256"] for s in families["qc_model_info"].samples] == [rt.bundle.sha256]


def test_controls_and_review_need_an_operator_and_go_the_commands_way(line, tmp_path):
    rt, tel, station, http = line
    alice = {"Authorization": "Bearer alice-secret"}
    assert http.post("/api/command/pause").status_code == 401
    assert http.post("/api/command/pause", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert http.post("/api/command/pause", headers=alice).json() == {"ok": True, "paused": True}
    assert rt.paused.is_set()
    assert http.post("/api/command/resume", headers=alice).json()["paused"] is False
    bad = http.post("/api/command/threshold", headers=alice, json={"value": 0.995})
    assert bad.status_code == 400 and "[0.01, 0.99]" in bad.json()["error"]
    assert http.post("/api/command/threshold", headers=alice, content=b"{" + b" " * 5000 + b"}").status_code == 413
    assert http.post("/api/command/reload", headers=alice, json={"path": "/etc"}).status_code == 400

    assert wait_for(lambda: len(http.get("/api/rejects").json()["entries"]) >= 3, timeout=30)
    entries = http.get("/api/rejects").json()["entries"]
    first, second = entries[0]["stem"], entries[1]["stem"]
    assert http.get(f"/rejects/{first}/frame").content[:4] == b"\x89PNG"
    assert http.post(f"/api/review/{first}", json={"label": "good"}).status_code == 401
    assert http.post(f"/api/review/{first}", headers=alice, json={"label": "dent"}).status_code == 400
    assert http.post(f"/api/review/{first}", headers=alice, json={"label": "good"}).json()["by"] == "alice"
    defect = next(label for label in rt.bundle.labels if label != "good")
    assert http.post(f"/api/review/{second}", headers=alice, json={"label": defect}).json()["ok"]
    found = http.get("/api/rejects").json()
    assert found["labelled"] == {"good": 1, defect: 1} and found["false_reject_share"] == 0.5
    sidecar = json.loads((rt.store.root / f"{first}.json").read_text())
    assert sidecar["review"]["label"] == "good" and sidecar["review"]["by"] == "alice"
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    assert review(rt.store.root, dataset) == {"good": 1, defect: 1}  # no --label: the operators' labels

    for path in ("/rejects/..%2F..%2Fetc%2Fpasswd/frame", "/rejects/%2Fetc%2Fpasswd/frame", f"/rejects/{first}/x",
                 "/rejects/000000000_nope/frame"):
        assert http.get(path).status_code == 404, path
    assert http.post("/api/review/..%2Fmodel", headers=alice, json={"label": "good"}).status_code == 404


def test_qc_station_token_makes_a_token_and_the_line_that_admits_it(tmp_path, capsys):
    from qc.cli import main

    assert main(["station", "token", "bob"]) == 0
    made = json.loads(capsys.readouterr().out)
    (tmp_path / "operators").write_text(made["operators_file_line"] + "\n")
    assert made["token"] not in made["operators_file_line"]
    assert load_operators(tmp_path / "operators") == {"bob": token_line("bob", made["token"]).split()[1]}
    assert main(["station", "token", "../bob"]) == 2


def test_an_open_bind_without_tokens_and_a_busy_port_are_start_up_errors(bundle_dir, synth32, tmp_path, monkeypatch):
    monkeypatch.delenv("QC_WEB_TOKEN", raising=False)
    rt, _ = make_runtime(bundle_dir, frames(synth32, tmp_path, n=2), tmp_path, web__bind="0.0.0.0", web__port=0)
    with pytest.raises(EdgeError, match="without operator tokens"):
        Station(rt, rt.cfg.web, load_operators(None)).start()
    monkeypatch.setenv("QC_WEB_TOKEN", "t0ken")
    assert load_operators(None) == {"admin": token_line("admin", "t0ken").split()[1]}
    first = Station(rt, rt.cfg.web.model_copy(update={"bind": "127.0.0.1"}), {}).start()
    try:
        with pytest.raises(EdgeError, match=f"web.port {first.port} on 127.0.0.1"):
            Station(rt, rt.cfg.web.model_copy(update={"bind": "127.0.0.1", "port": first.port}), {}).start()
    finally:
        first.stop()


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs "
                    "them)")
def test_the_page_in_a_real_browser(line, tmp_path):
    """Headless Chromium: the counts follow the parts, a control without the token is refused, pause from the
    page stops the line (and the stats telemetry publishes says so), a review label lands in the sidecar.
    QC_STATION_SCREENSHOT=docs/station.png keeps the screenshot for the README."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rt, tel, station, http = line
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # Debian's driver: nothing downloaded
    try:
        driver.get(station.url)
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: int(d.find_element(By.ID, "parts").text) >= 5)
        wait.until(lambda d: d.execute_script("return document.getElementById('frame').naturalWidth") > 0)
        driver.find_element(By.ID, "pause").click()  # no token yet
        wait.until(lambda d: "refused" in d.find_element(By.ID, "reply").text)
        assert not rt.paused.is_set()
        driver.find_element(By.ID, "token").send_keys("alice-secret")
        driver.find_element(By.ID, "pause").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "PAUSED")
        assert rt.paused.is_set() and wait_for(lambda: tel.stats_ and tel.stats_[-1]["paused"])
        driver.find_element(By.ID, "refresh").click()
        # the gallery re-renders as it loads: each step finds its figure afresh, by the frame's stem
        stem = wait.until(lambda d: d.execute_script(
            "const f = document.querySelector('#gallery figure'); return f && f.dataset.stem"))
        figure = f"#gallery figure[data-stem='{stem}']"
        driver.execute_script(f"document.querySelector(\"{figure} button[data-label='good']\").click()")
        sidecar = rt.store.root / f"{stem}.json"
        assert wait_for(lambda: json.loads(sidecar.read_text()).get("review", {}).get("by") == "alice")
        wait.until(lambda d: "reviewed: good" in d.execute_script(
            f"const f = document.querySelector(\"{figure}\"); return f ? f.textContent : ''"))
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(os.environ.get("QC_STATION_SCREENSHOT", str(tmp_path / "station.png")))
    finally:
        driver.quit()


def test_the_station_bench_runs_the_line_with_and_without_a_polling_client(bundle_dir):
    from bench.station import run_station_benchmark

    r = run_station_benchmark(bundle_dir, seconds=0.5, warmup=0.2)
    assert len(r["polls_answered"]) == 2 and all(p["state"] > 0 for p in r["polls_answered"])
    assert r["capacity_on_vs_off"] == pytest.approx(r["capacity_per_s"]["on"] / r["capacity_per_s"]["off"], abs=0.02)
