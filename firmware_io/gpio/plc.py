"""The PLC handshake on GPIO lines, as inspection stations speak it (Trigger, Ready, Busy, Result Ready, OK, NG,
Error, Result Ack, and a recipe number read on a strobe):

    ready        ‾‾‾‾‾‾‾‾|______________________________|‾‾‾‾‾‾‾‾
    trigger      ____|‾‾‾‾‾‾‾‾‾‾|_____________________________________   (PLC; a rising edge is a part)
    busy         ________|‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾|________________________________
    ok / ng      ________________________|‾‾‾‾‾‾‾‾‾‾|________   (one of them; error too if it was fail-safe)
    result_ready ________________________|‾‾‾‾‾‾‾‾‾‾|__________________
    result_ack   _______________________________|‾‾‾‾‾‾‾‾|_________   (PLC, after reading ok/ng)

A trigger while not ready is refused (error set, alarmed); a result not acknowledged within `ack_timeout_ms`
is withdrawn (error set, alarmed) and the box is ready again. A rising edge on `recipe_strobe` reads the
`recipe_bits` (bit 0 first) as a number and changes over to the recipe with that index, busy meanwhile; a
refused changeover sets error. `error` clears with the next accepted trigger or changeover.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from firmware_io.gpio.base import GPIOBackend
from firmware_io.gpio.config import PLCConfig

__all__ = ["PLCHandshake"]

OUTPUTS = ("ready", "busy", "result_ready", "ok", "ng", "error")


class PLCHandshake:
    def __init__(self, gpio: GPIOBackend, cfg: PLCConfig, clock, on_trigger: Callable[[float], None],
                 on_recipe: Callable[[int], bool] | None = None,
                 on_alarm: Callable[[str, str], None] = lambda kind, message: None):
        self.gpio, self.cfg, self.clock = gpio, cfg, clock
        self.on_trigger, self.on_recipe, self.on_alarm = on_trigger, on_recipe, on_alarm
        self.on, self.off = (1, 0) if cfg.active_high else (0, 1)
        self.state = "ready"  # ready -> busy -> result -> ready; ready -> changing -> ready
        self.ack_deadline: float | None = None
        self.counts: Counter = Counter()
        self.closed = False
        self._wake = threading.Condition()
        for name in OUTPUTS:
            gpio.setup_output(getattr(cfg, name), self.off)
        pressed = 0 if cfg.pull_up else 1  # the level an asserted input reads
        self.asserted = pressed
        gpio.setup_input(cfg.trigger, cfg.pull_up, self._edge(self._triggered), cfg.debounce_ms)
        gpio.setup_input(cfg.result_ack, cfg.pull_up, self._edge(self._acked), cfg.debounce_ms)
        for pin in cfg.recipe_bits:
            gpio.setup_input(pin, cfg.pull_up, None, cfg.debounce_ms)
        if cfg.recipe_strobe is not None:
            gpio.setup_input(cfg.recipe_strobe, cfg.pull_up, self._edge(self._strobed), cfg.debounce_ms)
        clock.attach(self, self._wake)
        self._set(ready=True)

    def _edge(self, handler):
        return lambda pin, level, t: handler(t) if level == self.asserted else None

    def _set(self, **levels: bool) -> None:
        for name, value in levels.items():
            self.gpio.write(getattr(self.cfg, name), self.on if value else self.off)

    # --- the PLC's side (input edges) ---

    def _triggered(self, t: float) -> None:
        with self._wake:
            if self.state != "ready":
                self.counts["trigger_refused"] += 1
                self._set(error=True)
                refused = self.state
            else:
                refused = None
                self.state = "busy"
                self.counts["triggers"] += 1
                self._set(ready=False, error=False, busy=True)
        if refused:
            self.on_alarm("plc_trigger_refused", f"a trigger while {refused}: ignored (wait for ready)")
        else:
            self.on_trigger(t)

    def _acked(self, t: float) -> None:
        with self._wake:
            if self.state == "result":
                self.counts["acked"] += 1
                self._withdraw()

    def _withdraw(self) -> None:
        self.state, self.ack_deadline = "ready", None
        self._set(ok=False, ng=False, result_ready=False, ready=True)

    def _strobed(self, t: float) -> None:
        index = sum(1 << i for i, pin in enumerate(self.cfg.recipe_bits) if self.gpio.read(pin) == self.asserted)
        with self._wake:
            if self.state != "ready" or self.on_recipe is None:
                self.counts["recipe_refused"] += 1
                self._set(error=True)
                self.on_alarm("plc_recipe_refused", f"recipe {index} asked while {self.state}: ignored")
                return
            self.state = "changing"
            self._set(ready=False, error=False, busy=True)
        # the changeover loads and test-runs a model: not on the thread that reads the input lines
        threading.Thread(target=self._change, args=(index,), name="plc-recipe", daemon=True).start()

    def _change(self, index: int) -> None:
        ok = False
        try:
            ok = bool(self.on_recipe(index))
        finally:
            with self._wake:
                self.counts["changeovers" if ok else "changeovers_refused"] += 1
                self.state = "ready"
                self._set(busy=False, error=not ok, ready=True)

    # --- the box's side ---

    def result(self, passed: bool, failsafe: bool) -> None:
        """The triggered part's decision: ok or ng (ng and error when it was decided fail-safe), then result
        ready until the PLC acknowledges it."""
        with self._wake:
            if self.state != "busy":
                return
            self.state = "result"
            self._set(ok=passed, ng=not passed, error=failsafe, busy=False)
            self._set(result_ready=True)  # after ok/ng: a PLC reading on this edge sees the result
            self.ack_deadline = self.clock.now() + self.cfg.ack_timeout_ms / 1000
            self._wake.notify()

    def next_deadline(self) -> float | None:
        return self.ack_deadline

    def service(self, now: float) -> None:
        with self._wake:  # reentrant: the real clock's timer thread calls this holding it already
            if self.ack_deadline is None or now < self.ack_deadline or self.state != "result":
                return
            self.counts["ack_timeouts"] += 1
            self._withdraw()
            self._set(error=True)
            self.on_alarm("plc_ack_timeout", f"no result_ack within {self.cfg.ack_timeout_ms:g} ms: result "
                          "withdrawn, ready again")

    def close(self) -> None:
        with self._wake:
            self.closed = True
            self._set(ready=False, busy=False, ok=False, ng=False, result_ready=False)
            self._wake.notify()
