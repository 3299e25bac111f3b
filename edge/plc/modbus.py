"""Modbus TCP for the PLC (pymodbus, its SimDevice data model): two holding registers it writes (the recipe
index, a command word) and input registers it reads (state, counters, the last result), the same again as
read-only holding registers from 100 for PLCs that read holding registers only. Every value is computed when
it is read, from what the runtime keeps. A write to an address that is not writable answers exception 2
(illegal data address), a value out of range exception 3 (illegal data value), a recipe change while one is
under way exception 6 (server busy). Numbers of two registers are unsigned 32-bit, high word first.

Modbus has no passwords: the server listens on loopback unless `modbus.bind` says otherwise, and takes
connections only from `modbus.allow` when that is set.
"""

from __future__ import annotations

import ipaddress
import time

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.config import ModbusConfig
from edge.plc import CHANGEOVER, REASON_CODES, STATES, BesideServer, LineView, check_port

__all__ = ["COMMANDS", "HOLDING", "INPUT", "MIRROR", "ModbusServer", "NONE"]

NONE = 0xFFFF  # no value: no recipe index, no result yet, no box
COMMANDS = {1: "pause", 2: "resume", 3: "reset"}  # the command word's values
HOLDING = {"recipe_index": 0, "command": 1}
MIRROR = 100  # the input registers again, read-only, as holding registers from this address


def _input_layout() -> dict[str, tuple[int, int]]:
    """{name: (address, registers)} of the input registers, in order."""
    fields = [("state", 1), ("recipe_index", 1), ("changeover", 1), ("uptime_s", 2), ("result_number", 2),
              ("decision", 1), ("reason", 1), ("class", 1), ("score", 1), ("box_x", 1), ("box_y", 1), ("box_w", 1),
              ("box_h", 1), ("time_s", 2), ("time_ms", 1), ("parts", 2), ("pass", 2), ("reject", 2),
              *[(f"reason_{r}", 2) for r in REASON_CODES]]  # last: a new reason only appends
    layout, at = {}, 0
    for name, size in fields:
        layout[name] = (at, size)
        at += size
    return layout


INPUT = _input_layout()
INPUT_SIZE = sum(size for _, size in INPUT.values())
DECISIONS = {"pass": 1, "reject": 2}  # 0: none yet


def _unix_ms(ts: float | None) -> tuple[int, int]:
    """(whole seconds, milliseconds) of a wall-clock time; (0, 0) for none."""
    if not ts:
        return 0, 0
    return int(ts), int((ts - int(ts)) * 1000)


def _u16(value) -> int:
    return NONE if value is None else max(0, min(int(value), 0xFFFE))


class ModbusServer(BesideServer):
    name = "modbus"

    def __init__(self, view: LineView, cfg: ModbusConfig):
        super().__init__(view)
        self.cfg = cfg
        self.port = cfg.port
        self.allow = [ipaddress.ip_network(n, strict=False) for n in cfg.allow]
        self.server: ModbusTcpServer | None = None

    # --- the registers ---

    def image(self) -> list[int]:
        """The input registers, as now."""
        v, regs = self.view, [0] * INPUT_SIZE
        counts = v.counters()
        last = v.last() or {}
        labels = self.rt.bundle.labels
        box = last.get("box") or [None] * 4
        seconds, ms = _unix_ms(last.get("ts"))
        values = {"state": STATES.index(v.state), "recipe_index": _u16(v.recipe_index()),
                  "changeover": CHANGEOVER.index(v.changeover), "uptime_s": int(time.time() - v.rt.started),
                  **{k: counts[k] for k in ("parts", "pass", "reject")},
                  **{f"reason_{r}": counts[r] for r in REASON_CODES},
                  "result_number": last["seq"] + 1 if last else 0, "decision": DECISIONS.get(last.get("decision"), 0),
                  "reason": REASON_CODES.index(last["reason"]) if last.get("reason") in REASON_CODES else NONE,
                  "class": labels.index(last["label"]) if last.get("label") in labels else NONE,
                  "score": NONE if last.get("score") is None else round(last["score"] * 10000),
                  "box_x": _u16(box[0]), "box_y": _u16(box[1]), "box_w": _u16(box[2]), "box_h": _u16(box[3]),
                  "time_s": seconds, "time_ms": ms}
        for name, (at, size) in INPUT.items():
            value = int(values[name]) & (0xFFFFFFFF if size == 2 else 0xFFFF)
            regs[at:at + size] = [value >> 16, value & 0xFFFF] if size == 2 else [value]
        return regs

    async def _action(self, fc: int, start: int, address: int, count: int, registers: list[int],
                      values: list[int] | None) -> ExcCodes | None:
        """Called by pymodbus for every request, after its own address checks: fill in the registers read,
        check and carry out the registers written."""
        if fc in (1, 2, 5, 15):  # no coils, no discrete inputs
            return ExcCodes.ILLEGAL_ADDRESS
        if values is None:
            image = self.image()
            if fc == 4:
                registers[:INPUT_SIZE] = image
            else:
                registers[HOLDING["recipe_index"] - start] = image[INPUT["recipe_index"][0]]
                registers[HOLDING["command"] - start] = 0
                registers[MIRROR - start:MIRROR - start + INPUT_SIZE] = image
            return None
        writes = dict(zip(range(address, address + len(values)), values))
        recipe, word = writes.get(HOLDING["recipe_index"]), writes.get(HOLDING["command"])
        name = None if recipe is None else self.view.by_index(recipe)
        if (recipe is not None and name is None) or (word is not None and word not in COMMANDS):
            return ExcCodes.ILLEGAL_VALUE
        if name is not None and not self.view.reserve():
            return ExcCodes.DEVICE_BUSY
        if word is not None:  # pause, resume and reset are quick: done before the answer
            await self._loop.run_in_executor(None, self.view.command, COMMANDS[word], "modbus")
        if name is not None:  # a changeover loads a model: answered at once, followed in `changeover`
            self._loop.run_in_executor(None, self.view.select, name, "modbus", True)
        return None

    # --- serving ---

    def _device(self) -> SimDevice:
        invalid = [SimData(0, datatype=DataType.BITS)]  # answered by _action: no coils, no discrete inputs
        holding = [SimData(0, count=len(HOLDING), values=0, datatype=DataType.REGISTERS),
                   SimData(MIRROR, count=INPUT_SIZE, values=0, datatype=DataType.REGISTERS, readonly=True)]
        inputs = [SimData(0, count=INPUT_SIZE, values=0, datatype=DataType.REGISTERS, readonly=True)]
        return SimDevice(0, simdata=(invalid, invalid, holding, inputs), action=self._action)

    async def _open(self) -> None:
        allow = self.allow

        class Handler(ServerRequestHandler):
            def connection_made(self, transport):
                peer = ipaddress.ip_address(transport.get_extra_info("peername")[0].split("%")[0])
                peer = getattr(peer, "ipv4_mapped", None) or peer  # an IPv4 PLC on a dual-stack bind
                if allow and not any(peer in net for net in allow):
                    transport.close()  # not a PLC this box was told about
                    return
                super().connection_made(transport)

        check_port("modbus.port", self.cfg.bind, self.cfg.port)
        server = ModbusTcpServer(self._device(), address=(self.cfg.bind, self.cfg.port))
        server.callback_new_connection = lambda: Handler(server, None, None, None)
        try:
            await server.serve_forever(background=True)
        except RuntimeError:
            raise RuntimeError(f"modbus.port {self.cfg.port} on {self.cfg.bind}: cannot listen (in use, or a "
                                "port below 1024 without CAP_NET_BIND_SERVICE)") from None
        self.server = server
        self.port = server.transport.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self.server is not None:
            await self.server.shutdown()

    @property
    def url(self) -> str:
        return f"modbus-tcp://{self.cfg.bind}:{self.port}"
