"""The PLC's own protocols, served by `qc run` beside the pipeline: OPC UA (`opcua:`, edge.plc.opcua) and
Modbus TCP (`modbus:`, edge.plc.modbus). Each runs an asyncio loop in a thread of its own and reads what the
runtime already keeps (its counts, the last part decided, the recent alarms); no part ever waits for either.
Their controls go through `Runtime.command`, the code path and checks of the MQTT commands and the station.
Recipes are named, never a file: a recipe names a bundle in the one configured bundles_dir."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading

from edge.decision import REASONS
from edge.errors import EdgeError

__all__ = ["CHANGEOVER", "BesideServer", "LineView", "REASON_CODES", "STATES", "check_port"]

STATES = ("starting", "running", "paused", "fault")  # their index is the state's number
REASON_CODES = tuple(REASONS)  # a reason's number is its place here: new reasons are only ever appended
CHANGEOVER = ("done", "changing", "refused")


class LineView:
    """What a PLC sees of the line, shared by both servers: the state, the recipe, counters it may reset (its
    own view: /metrics, MQTT and the station keep counting), the last result, and the controls."""

    def __init__(self, runtime):
        self.rt = runtime
        self._lock = threading.Lock()
        self._base: dict[str, int] = {}
        self.changeover = "done"  # the last recipe change asked by a PLC: done, changing or refused

    def _raw(self) -> dict[str, int]:
        c = self.rt.stats.totals()
        return {"parts": c.get("parts", 0), "pass": c.get("decision.pass", 0), "reject": c.get("decision.reject", 0),
                **{r: c.get(f"reason.{r}", 0) for r in REASON_CODES}}

    def counters(self) -> dict[str, int]:
        with self._lock:  # read with the baseline: a reset in between cannot make a count negative
            return {k: v - self._base.get(k, 0) for k, v in self._raw().items()}

    def reset_counters(self, by: str) -> dict:
        with self._lock:
            self._base = self._raw()
        print(f"[qc] counters reset ({by})", file=sys.stderr, flush=True)
        return {"ok": True}

    @property
    def state(self) -> str:
        return self.rt.state

    @property
    def recipe(self) -> str | None:
        return self.rt.model.recipe

    def recipe_index(self) -> int | None:
        r = self.rt.cfg.recipes.get(self.recipe) if self.recipe else None
        return r.index if r else None

    @property
    def recipes(self) -> list[str]:
        return list(self.rt.cfg.recipes)

    def by_index(self, index: int) -> str | None:
        return next((n for n, r in self.rt.cfg.recipes.items() if r.index == index), None)

    def last(self) -> dict | None:
        """The last part decided, in capture order: its event as published."""
        latest = self.rt.latest
        return latest[1] if latest else None

    def reserve(self) -> bool:
        """Claim the one changeover a PLC may have under way; False when one is."""
        with self._lock:
            if self.changeover == "changing":
                return False
            self.changeover = "changing"
            return True

    def select(self, name: str, by: str, reserved: bool = False) -> dict:
        """Change over to recipe `name` (blocks until its model is ready or refused); one at a time."""
        if not reserved and not self.reserve():
            return {"ok": False, "error": "a changeover is already under way"}
        reply = {"ok": False, "error": "changeover failed"}
        try:
            reply = self.rt.command("recipe", {"name": name}, by)
        finally:
            self.changeover = "done" if reply.get("ok") else "refused"
        return reply

    def command(self, name: str, by: str) -> dict:
        """pause, resume, or reset (the PLC's counters)."""
        return self.reset_counters(by) if name == "reset" else self.rt.command(name, {}, by)


class BesideServer:
    """A server with an asyncio loop in its own thread. `start()` returns once it listens, or raises a one-line
    EdgeError (a port in use, a bad file); `stop()` ends it. Subclasses give `_open`, `_serve` and `_close`."""

    name = "server"
    START_TIMEOUT_S = 60.0

    def __init__(self, view: LineView):
        self.view, self.rt = view, view.rt
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.thread: threading.Thread | None = None
        self.native_id: int | None = None

    def start(self):
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), name=self.name, daemon=True)
        self.thread.start()
        if not self._ready.wait(self.START_TIMEOUT_S):
            raise EdgeError(f"{self.name}: not listening after {self.START_TIMEOUT_S:.0f} s")
        if self._failed is not None:
            self.thread.join(5)
            raise EdgeError(f"{self.name}: {self._failed}") from None
        return self

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self.native_id = threading.get_native_id()  # the thread's id for the OS (bench.plc reads its CPU time)
        try:
            await self._open()
        except Exception as exc:
            self._failed = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._serve(self._stopping)
        finally:
            await self._close()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self.thread.join(10)

    def _warn(self, what: str, exc: BaseException) -> None:
        """A fault inside a server is said and counted; the server and the line go on."""
        self.rt.stats.count(f"{self.name}_faults")
        print(f"[qc] {self.name}: {what}: {exc!r}", file=sys.stderr, flush=True)

    async def _open(self) -> None:
        raise NotImplementedError

    async def _serve(self, stopping: asyncio.Event) -> None:
        await stopping.wait()

    async def _close(self) -> None:
        pass


def check_port(key: str, bind: str, port: int) -> None:
    """Raise a one-line error naming `key` when the address cannot be bound (in use, a port below 1024 without
    the capability, no such address), before a library tries and logs its own traceback."""
    if port == 0:
        return
    try:
        with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind, port))
    except OSError as exc:
        raise ValueError(f"{key} {port} on {bind}: {exc.strerror or exc}") from None
