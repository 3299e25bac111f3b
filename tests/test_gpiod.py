"""The gpiod backend (the kernel's GPIO character device) against a stand-in for the `gpiod` 2.x module that
records line requests and serves edge events through a pipe, as the kernel's event queue does (the kernel's
gpio-sim cannot be loaded here; no board was driven)."""

import enum
import os
import sys
import threading
import time
import types
from dataclasses import dataclass, field

import pytest

from firmware_io.errors import FirmwareIOError
from firmware_io.gpio.libgpiod import header_chip

from .test_pipeline import frames, make_runtime


class Value(enum.Enum):
    INACTIVE = 0
    ACTIVE = 1


Direction = enum.Enum("Direction", "AS_IS INPUT OUTPUT")
Bias = enum.Enum("Bias", "AS_IS UNKNOWN DISABLED PULL_UP PULL_DOWN")
Edge = enum.Enum("Edge", "NONE RISING FALLING BOTH")


@dataclass
class LineSettings:
    direction: Direction = Direction.AS_IS
    edge_detection: Edge = Edge.NONE
    bias: Bias = Bias.AS_IS
    output_value: Value = Value.INACTIVE


@dataclass
class EdgeEvent:
    Type = enum.Enum("Type", "RISING_EDGE FALLING_EDGE")
    event_type: object
    timestamp_ns: int
    line_offset: int


@dataclass
class Request:
    kernel: "Kernel"
    offset: int
    settings: LineSettings
    events: list = field(default_factory=list)
    released: bool = False

    def __post_init__(self):
        self.fd, self._w = os.pipe()
        self.value = self.settings.output_value

    def set_value(self, line, value):
        self.value = value
        self.kernel.writes.append((line, value, time.monotonic()))

    def get_value(self, line):
        return self.value

    def read_edge_events(self, max_events=None):
        os.read(self.fd, 4096)
        out, self.events = self.events, []
        return out

    def release(self):
        self.released = True


class Kernel:
    """What the `gpiod` module talks to: chips by label, line requests, edges."""

    def __init__(self, labels=None, busy=(), no_bias=False):
        self.labels, self.busy, self.no_bias = labels or {}, set(busy), no_bias
        self.requests: dict[int, Request] = {}
        self.asked: list[tuple] = []
        self.writes: list[tuple] = []

    def module(self):
        kernel = self
        gpiod = types.ModuleType("gpiod")
        line = types.ModuleType("gpiod.line")
        line.Value, line.Direction, line.Bias, line.Edge = Value, Direction, Bias, Edge
        gpiod.line, gpiod.LineSettings, gpiod.EdgeEvent = line, LineSettings, EdgeEvent

        def request_lines(path, config, consumer=None):
            (offset, settings), = config.items()
            kernel.asked.append((path, consumer, offset, settings))
            if offset in kernel.busy:
                raise OSError(16, "Device or resource busy")
            if kernel.no_bias and settings.bias != Bias.AS_IS:
                raise OSError(95, "Operation not supported")
            kernel.requests[offset] = Request(kernel, offset, settings)
            return kernel.requests[offset]

        class Chip:
            def __init__(self, path):
                self.path = path

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def get_info(self):
                return types.SimpleNamespace(label=kernel.labels[self.path])

        gpiod.request_lines, gpiod.Chip = request_lines, Chip
        gpiod.is_gpiochip_device = lambda path: path in kernel.labels
        return gpiod, line

    def edge(self, offset, level, t):
        req = self.requests[offset]
        kind = EdgeEvent.Type.RISING_EDGE if level else EdgeEvent.Type.FALLING_EDGE
        req.events.append(EdgeEvent(kind, int(t * 1e9), offset))
        os.write(req._w, b"x")


@pytest.fixture
def kernel(monkeypatch):
    k = Kernel()
    gpiod, line = k.module()
    monkeypatch.setitem(sys.modules, "gpiod", gpiod)
    monkeypatch.setitem(sys.modules, "gpiod.line", line)
    return k


def test_a_pis_header_chip_is_found_by_its_label(tmp_path):
    labels = {}
    for n, label in enumerate(["gpio-brcmstb@107d508500", "gpio-brcmstb@107d517c00", "7c0", "7c1",
                               "pinctrl-rp1"]):  # a Pi 5 on a 6.1 kernel: the header on gpiochip4
        (tmp_path / f"gpiochip{n}").touch()
        labels[str(tmp_path / f"gpiochip{n}")] = label
    gpiod, _ = Kernel(labels).module()
    assert header_chip(gpiod, tmp_path) == str(tmp_path / "gpiochip4")
    del labels[str(tmp_path / "gpiochip4")]
    assert header_chip(gpiod, tmp_path) == str(tmp_path / "gpiochip0")  # no Pi: the first chip


def test_part_sensor_edges_carry_the_kernels_time_and_the_gate_fires_through_line_requests(
        kernel, bundle_dir, synth32, tmp_path):
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=6), tmp_path, decision__threshold=0.0,
                           trigger__mode="part_sensor", gpio__backend="gpiod", gpio__chip="/dev/gpiochip0",
                           gpio__part_sensor={"pin": 4, "pull_up": True, "debounce_ms": 1},
                           gpio__gate={"pins": [17], "delay_ms": 1000, "pulse_ms": 5, "min_gap_ms": 0})
    asked = {offset: (path, consumer, s) for path, consumer, offset, s in kernel.asked}
    assert asked[17][2].direction == Direction.OUTPUT and asked[17][2].output_value == Value.INACTIVE
    assert asked[4][2].bias == Bias.PULL_UP and asked[4][2].edge_detection == Edge.BOTH
    assert {path for path, *_ in asked.values()} == {"/dev/gpiochip0"} and asked[4][1] == "qc-inspect"
    scheduled = []
    schedule = rt.gate.schedule
    rt.gate.schedule = lambda stamp, *a, **k: (scheduled.append(stamp), schedule(stamp, *a, **k))[1]
    sensed = []

    def conveyor():
        for _ in range(3):
            time.sleep(0.1)
            t = time.monotonic() - 0.004  # the kernel saw the edge 4 ms before this process hears of it
            sensed.append(t)
            kernel.edge(4, 0, t)  # a part pulls the line low (pull-up sensor) ...
            kernel.edge(4, 1, t + 0.002)  # ... and lets it go
        time.sleep(1.3)  # the last part reaches the gate (decided well within the 1 s delay, even on a busy machine)
        rt.stop_event.set()

    thread = threading.Thread(target=conveyor)
    thread.start()
    rt.run(on_stats=lambda line: None)
    thread.join()
    assert len(tel.inspections) == 3
    assert scheduled == pytest.approx(sensed, abs=1e-6)  # the gate fires from the kernel's edge times
    opened = [t for line, v, t in kernel.writes if line == 17 and v == Value.ACTIVE]
    assert len(opened) == 3
    assert all(kernel.requests[o].released for o in (4, 17))  # cleanup returns the lines


def test_a_busy_line_is_a_named_error(kernel):
    from firmware_io.gpio import make_backend

    kernel.busy.add(17)
    gpio = make_backend("gpiod", chip="/dev/gpiochip0")
    with pytest.raises(FirmwareIOError, match=r"GPIO 17 \(output\) on /dev/gpiochip0: .*busy.*another process"):
        gpio.setup_output(17, 0)


def test_a_chip_without_pull_ups_takes_the_input_and_says_to_fit_a_resistor(kernel, capsys):
    from firmware_io.gpio import make_backend

    kernel.no_bias = True
    gpio = make_backend("gpiod", chip="/dev/gpiochip0")
    gpio.setup_input(4, True, None)
    assert kernel.requests[4].settings.bias == Bias.AS_IS
    assert "fit an external resistor" in capsys.readouterr().err
