"""The service as systemd runs it: watchdog pings only while every worker is alive; the unit verifies and
is locked down (`systemd-analyze`, offline: these machines are not booted with systemd)."""

import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from .test_pipeline import frames, make_runtime

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "qc-inspect.service"


class _Stuck:
    """A classifier that hangs while `hang` is set, as a wedged driver or accelerator would."""

    def __init__(self, inner, hang: threading.Event, release: threading.Event):
        self.inner, self.name, self.hang, self.release = inner, inner.name, hang, release

    def infer(self, x):
        if self.hang.is_set():
            self.release.wait()
        return self.inner.infer(x)


def test_watchdog_pings_stop_while_a_worker_is_stuck(bundle_dir, synth32, tmp_path, monkeypatch):
    sock_path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # 2 s: pings every 1 s; a worker stale 1 s stops them
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=12), tmp_path, source__rate_hz=20,
                           source__loop=True)
    hang, release = threading.Event(), threading.Event()
    rt.model = replace(rt.model, classifiers=tuple(_Stuck(c, hang, release) for c in rt.model.classifiers))
    got, pinged = [], []  # what the socket received; when each ping was sent (the listener may run late)
    send = rt.watchdog.notify
    rt.watchdog.notify = lambda: (pinged.append(time.monotonic()), send())

    def listen():
        while not rt.stop_event.is_set():
            try:
                got.append((time.monotonic(), sock.recv(256).decode()))
            except TimeoutError:
                continue

    marks = {}

    def script():
        time.sleep(3.0)
        marks["hang"] = time.monotonic()
        hang.set()
        time.sleep(4.0)
        marks["release"] = time.monotonic()
        hang.clear()
        release.set()
        time.sleep(1.5)
        rt.stop_event.set()

    threads = [threading.Thread(target=listen), threading.Thread(target=script)]
    for t in threads:
        t.start()
    rt.run(on_stats=lambda line: None)
    for t in threads:
        t.join()
    sock.close()
    pings = pinged
    assert any(msg.startswith("READY=1") for _, msg in got)
    assert sum(msg.startswith("WATCHDOG=1") for _, msg in got) == len(pings)
    assert any(t < marks["hang"] for t in pings)  # alive: pings every half interval
    # the workers are stuck on the first parts after the hang (0.05 s apart at 20 parts/s) and stale 1 s later;
    # another second of margin on a loaded machine leaves 2 s in which 2 pings were due
    assert not [t for t in pings if marks["hang"] + 2.0 < t < marks["release"]], [round(t - marks["hang"], 2)
                                                                                  for t in pings]
    assert any(t > marks["release"] for t in pings)  # it came back: pings again
    assert any(a["kind"] == "stuck" for a in tel.alarms)


def _analyze():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs systemd)")
    return "systemd-analyze"


def test_unit_is_locked_down_and_watched():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                 "PrivateTmp=yes", "DevicePolicy=closed", "DeviceAllow=char-gpiochip rw", "CapabilityBoundingSet=\n",
                 "UMask=0077", "PYTHONUNBUFFERED=1"):
        assert line in text, line
    out = subprocess.run([_analyze(), "security", "--offline=true", str(UNIT)], capture_output=True, text=True,
                         timeout=60)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout).group(1))
    assert score < 4.0, out.stdout[-400:]  # the unit before: 9.2 UNSAFE


@pytest.mark.parametrize("unit, instance", [(UNIT, UNIT.name),
                                            (UNIT.parent / "fleet" / "qc-collector@.service", "qc-collector@c1.service")])
def test_unit_verifies_against_a_staged_root(tmp_path, unit, instance):
    """A unit (the box's, a collector's), the command it runs and the system's own units in a root of their own:
    a mistyped key or a missing command is a warning line naming the unit."""
    analyze = _analyze()
    system_units = Path("/usr/lib/systemd/system")
    if not (system_units / "sysinit.target").exists():
        pytest.skip("the system's units (package systemd) are not installed")
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    qc = root / "opt/qc/venv/bin/qc"
    qc.parent.mkdir(parents=True)
    qc.write_text("#!/bin/sh\n")
    qc.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    out = subprocess.run([analyze, "verify", f"--root={root}", f"/etc/systemd/system/{instance}"],
                         capture_output=True, text=True, timeout=60)
    problems = [line for line in out.stderr.splitlines() if unit.name.split("@")[0] in line or "qc" in line]
    assert out.returncode == 0 and not problems, out.stderr
