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
from datetime import timedelta

import pytest

from firmware_io.errors import FirmwareIOError
from firmware_io.gpio import make_backend, resolve
from firmware_io.gpio.libgpiod import GpiodGPIO

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
    debounce_period: timedelta = timedelta(0)
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
    chip: str
    offset: int
    settings: LineSettings
    events: list = field(default_factory=list)
    released: bool = False

    def __post_init__(self):
        self.fd, self._w = os.pipe()
        self.value = self.settings.output_value

    def set_value(self, line, value):
        self.value = value
        self.kernel.writes.append((self.chip, line, value, time.monotonic()))

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

    def __init__(self, labels=None, busy=(), no_bias=False, names=None):
        self.labels, self.busy, self.no_bias = labels or {}, set(busy), no_bias
        self.names = names or {}  # (chip, line name) -> offset
        self.requests: dict[tuple[str, int], Request] = {}
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
            assert isinstance(offset, int)  # names are resolved through the chip first
            kernel.asked.append((path, consumer, offset, settings))
            if (path, offset) in kernel.busy:
                raise OSError(16, "Device or resource busy")
            if kernel.no_bias and settings.bias != Bias.AS_IS:
                raise OSError(95, "Operation not supported")
            kernel.requests[path, offset] = Request(kernel, path, offset, settings)
            return kernel.requests[path, offset]

        class Chip:
            def __init__(self, path):
                self.path = path

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def get_info(self):
                return types.SimpleNamespace(label=kernel.labels[self.path])

            def line_offset_from_id(self, name):
                if (self.path, name) not in kernel.names:
                    raise ValueError(f"line {name!r} not found")
                return kernel.names[self.path, name]

        gpiod.request_lines, gpiod.Chip = request_lines, Chip
        gpiod.is_gpiochip_device = lambda path: path in kernel.labels
        return gpiod, line

    def edge(self, chip, offset, level, t):
        req = self.requests[chip, offset]
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


def test_bcm_numbers_are_on_a_pis_header_chip_found_by_its_label(tmp_path, monkeypatch):
    labels = {}
    for n, label in enumerate(["gpio-brcmstb@107d508500", "gpio-brcmstb@107d517c00", "7c0", "7c1",
                               "pinctrl-rp1"]):  # a Pi 5 on a 6.1 kernel: the header on gpiochip4
        (tmp_path / f"gpiochip{n}").touch()
        labels[str(tmp_path / f"gpiochip{n}")] = label
    kernel = Kernel(labels)
    for name, module in zip(("gpiod", "gpiod.line"), kernel.module()):
        monkeypatch.setitem(sys.modules, name, module)
    gpio = GpiodGPIO(devices=tmp_path)
    assert gpio.locate(17) == (str(tmp_path / "gpiochip4"), 17)
    assert gpio.locate("gpiochip1:5") == (str(tmp_path / "gpiochip1"), 5)
    assert gpio.locate("7c0:PQ.05") == (str(tmp_path / "gpiochip2"), "PQ.05")  # a chip by label, a line by name
    del labels[str(tmp_path / "gpiochip4")]
    with pytest.raises(FirmwareIOError, match="GPIO 17: no Raspberry Pi header chip .* CHIP:LINE"):
        gpio.locate(17)  # not a Pi: BCM numbers mean nothing here
    with pytest.raises(FirmwareIOError, match="no GPIO chip labelled 'tegra234-gpio'"):
        gpio.locate("tegra234-gpio:PQ.05")


def test_part_sensor_edges_carry_the_kernels_time_and_the_gate_fires_through_line_requests(
        kernel, bundle_dir, synth32, tmp_path):
    kernel.names["/dev/gpiochip1", "PQ.05"] = 17
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=6), tmp_path, decision__threshold=0.0,
                           trigger__mode="part_sensor", gpio__backend="gpiod",
                           gpio__part_sensor={"pin": "gpiochip0:17", "pull_up": True, "debounce_ms": 5},
                           gpio__gate={"pins": ["/dev/gpiochip1:PQ.05"], "delay_ms": 1000, "pulse_ms": 5,
                                       "min_gap_ms": 0})
    asked = {(path, offset): (consumer, s) for path, consumer, offset, s in kernel.asked}
    gate, sensor = ("/dev/gpiochip1", 17), ("/dev/gpiochip0", 17)  # the same offset on two chips: two lines
    assert asked[gate][1].direction == Direction.OUTPUT and asked[gate][1].output_value == Value.INACTIVE
    assert asked[sensor][1].bias == Bias.PULL_UP and asked[sensor][1].edge_detection == Edge.BOTH
    assert asked[sensor][1].debounce_period == timedelta(milliseconds=5)  # the kernel debounces
    assert asked[sensor][0] == "qc-inspect"
    scheduled = []
    schedule = rt.gate.schedule
    rt.gate.schedule = lambda stamp, *a, **k: (scheduled.append(stamp), schedule(stamp, *a, **k))[1]
    sensed = []

    def conveyor():
        for _ in range(3):
            time.sleep(0.1)
            t = time.monotonic() - 0.009  # the line fell 9 ms before this process hears of it ...
            sensed.append(t)
            kernel.edge(*sensor, 0, t + 0.005)  # ... reported once steady for the debounce period (pull-up sensor)
            kernel.edge(*sensor, 1, t + 0.007)  # ... and lets it go
        time.sleep(1.3)  # the last part reaches the gate (decided well within the 1 s delay, even on a busy machine)
        rt.stop_event.set()

    thread = threading.Thread(target=conveyor)
    thread.start()
    rt.run(on_stats=lambda line: None)
    thread.join()
    assert len(tel.inspections) == 3
    assert scheduled == pytest.approx(sensed, abs=1e-6)  # the gate fires from the time the line changed
    opened = [t for chip, line, v, t in kernel.writes if (chip, line) == gate and v == Value.ACTIVE]
    assert len(opened) == 3
    assert kernel.requests[gate].released and kernel.requests[sensor].released  # cleanup returns the lines


def test_a_busy_or_unknown_line_is_a_named_error(kernel):
    kernel.busy.add(("/dev/gpiochip0", 17))
    gpio = make_backend("gpiod")
    with pytest.raises(FirmwareIOError, match=r"GPIO gpiochip0:17 \(output\) on /dev/gpiochip0: .*busy.*another "):
        gpio.setup_output("gpiochip0:17", 0)
    with pytest.raises(FirmwareIOError, match=r"GPIO gpiochip0:PZ.99 \(output\) on /dev/gpiochip0: .*not found"):
        gpio.setup_output("gpiochip0:PZ.99", 0)


def test_a_chip_without_pull_ups_takes_the_input_and_says_to_fit_a_resistor(kernel, capsys):
    kernel.no_bias = True
    gpio = make_backend("gpiod")
    gpio.setup_input("gpiochip0:4", True, None)
    assert kernel.requests["/dev/gpiochip0", 4].settings.bias == Bias.AS_IS
    assert "fit an external resistor" in capsys.readouterr().err


@pytest.mark.parametrize("machine, platform, backend", [("aarch64", "linux", "gpiod"), ("armv7l", "linux", "gpiod"),
                                                        ("x86_64", "linux", "sim"), ("arm64", "darwin", "sim")])
def test_auto_is_the_kernels_gpio_on_arm_linux(monkeypatch, machine, platform, backend):
    monkeypatch.setattr("platform.machine", lambda: machine)
    monkeypatch.setattr("sys.platform", platform)
    assert resolve("auto") == backend and resolve("rpi") == "rpi"


@pytest.mark.parametrize("gpio, problem", [
    ({"gate": {"pins": ["17"]}}, "'17' is not CHIP:LINE"),  # a quoted number in YAML
    ({"gate": {"pins": [30]}}, "30 is not a BCM GPIO pin"),
    ({"backend": "rpi", "gate": {"pins": ["gpiochip0:17"]}}, "rpi backend takes BCM numbers"),
    ({"gate": {"pins": ["gpiochip0:17", "/dev/gpiochip0:17"]}}, "both use GPIO"),
])
def test_pin_names_are_checked(gpio, problem):
    from firmware_io.errors import ConfigError
    from firmware_io.gpio.config import GPIOConfig
    from firmware_io.settings import validated

    with pytest.raises(ConfigError, match=problem):
        validated(GPIOConfig, gpio, "edge.yaml")
