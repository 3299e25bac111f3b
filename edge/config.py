"""The edge runtime's configuration: one YAML file, validated with pydantic (`extra="forbid"`).

Loading YAML is separate from validating; a typo names the key. `deploy/edge.example.yaml` shows all.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from edge.errors import EdgeError
from edge.images import MAX_PIXELS
from firmware_io.gpio.config import GPIOConfig
from firmware_io.mqtt.config import MQTTConfig
from firmware_io.settings import Strict, load_yaml, validated

__all__ = ["BOX_TRIGGERED", "EdgeConfig", "RecipeConfig", "load_config", "load_yaml", "validate_config", "validated"]


_CORES = os.cpu_count() or 2


class ClassifierConfig(Strict):
    backend: Literal["auto", "cpu", "edgetpu"] = Field("auto", description="auto: Edge TPU for _edgetpu models")
    num_threads: int = Field(default_factory=lambda: max(1, _CORES // 2), ge=1, le=16,
                             description="LiteRT CPU threads per interpreter (XNNPACK); default: half the CPU "
                             "cores, as two workers run the model side by side")


class SourceConfig(Strict):
    kind: Literal["folder", "video", "camera", "stream", "aravis", "gstreamer", "picamera2"] = Field(
        "folder", description="folder/video: recorded; camera, stream: OpenCV (USB camera, RTSP); aravis: GigE or "
        "USB3 Vision; gstreamer: a pipeline (Jetson CSI camera); picamera2: the Raspberry Pi camera")
    path: str = Field("", description="folder or video file; camera index or /dev/videoN; rtsp:// or http:// URL; "
                      "aravis: camera id (vendor-model-serial, empty: the first found); picamera2: camera number")
    pipeline: str = Field("", description="gstreamer: the source part of a pipeline, e.g. \"nvarguscamerasrc ! "
                          "nvvidconv\"; frames leave it through videoconvert and an appsink as BGR")
    loop: bool = Field(False, description="folder/video: start again at the end")
    rate_hz: float | None = Field(None, gt=0, description="folder/video: parts per second, as on a line (None: "
                                  "as fast as the workers take them, every frame inspected)")
    max_pixels: int = Field(MAX_PIXELS, gt=0, description="folder: an image over this many pixels is refused from "
                            "its header, before decoding (a fail-safe too_large reject)")
    width: int | None = Field(None, gt=0, description="camera: requested frame width")
    height: int | None = Field(None, gt=0, description="camera: requested frame height")
    fps: float | None = Field(None, gt=0, description="camera: frame rate (free-running)")
    region: tuple[int, int, int, int] | None = Field(None, description="aravis: sensor region x, y, w, h read out "
                                                      "by the camera (less to transfer than a pipeline.roi)")
    pixel_format: str | None = Field(None, description="aravis: Mono8, RGB8 or a Bayer 8-bit format (BayerRG8...), "
                                     "converted to BGR on the box (None: the camera's current one)")
    exposure_us: float | None = Field(None, gt=0, description="aravis, picamera2: exposure time in microseconds")
    gain: float | None = Field(None, ge=0, description="aravis, picamera2: analogue gain")
    trigger_line: str = Field("Line1", description="aravis with trigger.mode camera: the camera's trigger input")
    buffers: int = Field(8, ge=2, le=64, description="aravis: stream buffers in the driver; gstreamer: appsink queue")
    bgr: bool = Field(True, description="frames arrive as OpenCV BGR (folder images and camera kinds are BGR)")
    reconnect_min_s: float = Field(0.5, gt=0, description="camera/stream: first reconnect wait")
    reconnect_max_s: float = Field(10.0, gt=0, description="camera/stream: longest reconnect wait")
    open_timeout_s: float = Field(20.0, ge=0, description="camera/stream: how long the first open at start may "
                                  "take (a slow boot or link); then a start-up error")
    stall_s: float = Field(5.0, gt=0, description="free-running: no frame for this long (or 3 frame periods) is a "
                           "camera_lost alarm")


# the modes in which the box triggers each part (its frame is grabbed after the trigger); in the others each
# frame the source delivers is a part
BOX_TRIGGERED = ("part_sensor", "encoder", "plc")


class TriggerConfig(Strict):
    mode: Literal["free", "part_sensor", "encoder", "camera", "plc"] = Field(
        "free", description="free: each frame is a part; part_sensor: a part on its edge; encoder: every pitch; "
        "camera: the part sensor is wired to the camera's trigger input, each frame it takes is a part (aravis); "
        "plc: a part on the PLC's trigger, its result on ok/ng (gpio.plc)")
    pitch_counts: int | None = Field(None, gt=0, description="encoder mode: counts between parts")
    frame_timeout_ms: float = Field(500.0, gt=0, description="part_sensor/encoder: a trigger with no frame exposed "
                                    "after it within this time is a fail-safe reject (camera_lost)")


class DecisionConfig(Strict):
    threshold: float | None = Field(None, ge=0, le=1, description="override the bundle's reject threshold")
    class_thresholds: dict[str, float] = Field(default_factory=dict, description="reject when p(class) >= this")
    on_error: Literal["reject", "pass"] = Field("reject", description="a frame that cannot be inspected: "
                                                "reject (fail-safe, reason failsafe) or pass (on purpose)")
    deadline_ms: float = Field(1000.0, gt=0, description="a part not decided this long after capture is a "
                               "failsafe reject")


class PipelineConfig(Strict):
    workers: int = Field(default_factory=lambda: min(2, _CORES), ge=1, le=16,
                         description="threads that each preprocess a part and run the model: while one runs the "
                         "model, the other prepares the next frame")
    queue_size: int = Field(8, ge=1, le=256, description="frames waiting for a worker (memory: this many frames); "
                            "a part that finds it full is a fail-safe reject (overflow)")
    roi: tuple[int, int, int, int] | None = Field(None, description="region of interest x, y, w, h in pixels")


class StoreConfig(Strict):
    dir: Path | None = Field(Path("rejects"), description="where reject frames go (None: keep none)")
    max_files: int = Field(2000, ge=1, description="frames kept; the oldest are removed first")
    sample_passes: float = Field(0.0, ge=0, le=1, description="share of passed parts kept too")


class WebConfig(Strict):
    enabled: bool = Field(True, description="serve the station's page, its API and /metrics from `qc run`")
    bind: str = Field("127.0.0.1", description="address to listen on; any other than loopback needs operator tokens")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free one)")
    operators_file: Path | None = Field(None, description="operators' tokens, one `name sha256-of-token` per line "
                                        "(qc station token NAME makes one); QC_WEB_TOKEN in the environment is "
                                        "the operator admin")
    feed_hz: float = Field(2.0, gt=0, le=10, description="live page updates and frames per second, at most")


class OpcUaConfig(Strict):
    enabled: bool = Field(False, description="serve the OPC UA server from `qc run` (asyncua, the plc extra)")
    bind: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(4840, ge=0, le=65535, description="TCP port (0: any free one)")
    users_file: Path | None = Field(None, description="users, one `name sha256-of-password` per line (qc opcua user "
                                    "NAME makes one); QC_OPCUA_PASSWORD in the environment is the user QC_OPCUA_USER "
                                    "(default plc)")
    anonymous: bool = Field(False, description="let clients in without a user, to browse, read and subscribe only")
    pki_dir: Path = Field(Path("opcua"), description="the server's certificate and key (made on first start), "
                          "trusted/ client certificates, and rejected/ where unknown ones are kept for review")
    update_ms: float = Field(100.0, ge=10, le=10000, description="how often the address space follows the line")


class ModbusConfig(Strict):
    enabled: bool = Field(False, description="serve Modbus TCP from `qc run` (pymodbus, the plc extra)")
    bind: str = Field("127.0.0.1", description="address to listen on; Modbus has no passwords: keep it on loopback "
                      "or the PLC's own network, and name the PLC in `allow`")
    port: int = Field(5020, ge=0, le=65535, description="TCP port (0: any free one; 502 needs "
                      "CAP_NET_BIND_SERVICE)")
    allow: list[str] = Field(default_factory=list, description="client addresses or networks (10.0.0.5, "
                             "10.0.0.0/24) that may connect; empty: any that reach the bind address")


RECIPE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


class RecipeConfig(Strict):
    """A product the line makes: what the box inspects it with. A setting left unset keeps the config's own."""

    bundle: str = Field(description="the bundle: a folder's name in bundles_dir (never a path)")
    index: int | None = Field(None, ge=0, le=255, description="the number a PLC selects it by on gpio.plc's "
                              "recipe_bits")
    threshold: float | None = Field(None, gt=0, lt=1, description="reject threshold (default: the bundle's)")
    class_thresholds: dict[str, float] | None = Field(None, description="as decision.class_thresholds")
    roi: tuple[int, int, int, int] | None = Field(None, description="as pipeline.roi")
    gate_delay_ms: float | None = Field(None, gt=0, description="as gpio.gate.delay_ms (a time-based gate)")
    gate_distance_counts: int | None = Field(None, gt=0, description="as gpio.gate.distance_counts (an encoder gate)")
    gate_pulse_ms: float | None = Field(None, gt=0, description="as gpio.gate.pulse_ms")
    exposure_us: float | None = Field(None, gt=0, description="camera exposure (aravis, picamera2)")
    gain: float | None = Field(None, ge=0, description="camera gain (aravis, picamera2)")


class EdgeConfig(Strict):
    line: str = Field("line1", description="line name, used in topics and ids")
    station: str = Field("station1", description="station name, used in topics and ids")
    bundle: Path = Field(description="model bundle folder")
    reload_watch: bool = Field(True, description="reload when the bundle's files change")
    bundle_key: Path | None = Field(None, description="public key (qc bundle keygen): every bundle must be signed "
                                    "with its private key (qc bundle sign), at start and reload; None: a bundle is "
                                    "trusted by its file permissions alone")
    bundles_dir: Path | None = Field(None, description="the folder of bundles a `reload` command may name (by folder "
                                     "name, never by path); None: reload by command is off")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    stats_interval_s: float = Field(5.0, gt=0, description="console and telemetry stats period")
    gpio: GPIOConfig = Field(default_factory=GPIOConfig)
    mqtt: MQTTConfig = Field(default_factory=lambda: MQTTConfig(enabled=False))
    web: WebConfig = Field(default_factory=WebConfig)
    opcua: OpcUaConfig = Field(default_factory=OpcUaConfig)
    modbus: ModbusConfig = Field(default_factory=ModbusConfig)
    recipes: dict[str, RecipeConfig] = Field(default_factory=dict, description="products by name; a `recipe` "
                                             "command (MQTT, the station, a PLC) changes over between parts")
    recipe: str | None = Field(None, description="the recipe the box starts with (None: `bundle` and the settings "
                               "above)")


def validate_config(values: dict, source: str = "config") -> EdgeConfig:
    cfg = validated(EdgeConfig, values, source)
    if cfg.trigger.mode == "part_sensor" and cfg.gpio.part_sensor is None:
        raise EdgeError(f"{source}: trigger.mode part_sensor needs gpio.part_sensor")
    if cfg.trigger.mode == "encoder" and (cfg.gpio.encoder is None or cfg.trigger.pitch_counts is None):
        raise EdgeError(f"{source}: trigger.mode encoder needs gpio.encoder and trigger.pitch_counts")
    if cfg.trigger.mode == "plc" and cfg.gpio.plc is None:
        raise EdgeError(f"{source}: trigger.mode plc needs gpio.plc (its trigger, result_ack and outputs)")
    if cfg.trigger.mode == "camera" and cfg.source.kind != "aravis":
        raise EdgeError(f"{source}: trigger.mode camera needs source.kind aravis (a camera with a trigger input)")
    if cfg.source.kind == "gstreamer" and not cfg.source.pipeline.strip():
        raise EdgeError(f"{source}: source.kind gstreamer needs source.pipeline")
    for net in cfg.modbus.allow:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise EdgeError(f"{source}: modbus.allow {net!r} is not an address or a network") from None
    _check_recipes(cfg, source)
    return cfg


def _check_recipes(cfg: EdgeConfig, source: str) -> None:
    if cfg.recipes and cfg.bundles_dir is None:
        raise EdgeError(f"{source}: recipes name bundles in bundles_dir: set bundles_dir")
    indexes: dict[int, str] = {}
    by_distance = cfg.gpio.gate.distance_counts is not None
    for name, r in cfg.recipes.items():
        if not re.fullmatch(RECIPE_NAME, name):
            raise EdgeError(f"{source}: recipe name {name!r}: letters, digits, '_', '.' and '-' only")
        if not re.fullmatch(RECIPE_NAME, r.bundle):
            raise EdgeError(f"{source}: recipes.{name}.bundle {r.bundle!r} is not a plain folder name in bundles_dir")
        if r.index is not None and indexes.setdefault(r.index, name) != name:
            raise EdgeError(f"{source}: recipes {indexes[r.index]} and {name} both have index {r.index}")
        if (r.gate_delay_ms if by_distance else r.gate_distance_counts) is not None:
            raise EdgeError(f"{source}: recipes.{name}: the gate fires by "
                            f"{'encoder distance: set gate_distance_counts' if by_distance else 'time: set gate_delay_ms'}")
        if (r.exposure_us is not None or r.gain is not None) and cfg.source.kind not in ("aravis", "picamera2"):
            raise EdgeError(f"{source}: recipes.{name} sets the camera's exposure or gain, which source.kind "
                            f"{cfg.source.kind} cannot change")
    if cfg.recipe is not None and cfg.recipe not in cfg.recipes:
        raise EdgeError(f"{source}: recipe {cfg.recipe!r} is not one of recipes {sorted(cfg.recipes)}")


def load_config(path: Path | None, overrides: dict | None = None) -> EdgeConfig:
    """YAML file (optional) + dotted overrides from the command line, then validation."""
    values = load_yaml(path) if path else {}
    for dotted, value in (overrides or {}).items():
        node = values
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return validate_config(values, str(path or "options"))
