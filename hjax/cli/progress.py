"""A progress line for long runs, on stderr: step, loss, examples (or images) per second and an
ETA measured after compilation.

``--progress=auto`` (the default) shows it only when stderr is a terminal (one line that
overwrites itself); ``on`` forces it (on a file or pipe: a full line at most every few
seconds, and at the end of each phase); ``off`` never shows it.

Timing: each phase (a ColoredMNIST restart, a DomainBed job) starts with a compile, so the
interval up to the phase's first step is left out of the rate, and the ETA is the remaining
steps at the rate of the steps after it, plus the time the caller says is still due for
other work (a DomainBed job's evaluations, :meth:`Progress.other_work`); time between steps
spent on that work is left out of the rate (:meth:`Progress.rebase`). The ETA says
"(provisional)" while it rests on fewer than :data:`PROVISIONAL_STEPS` steps.
"""

from __future__ import annotations

import sys
import time

MODES = ("auto", "on", "off")
PROVISIONAL_STEPS = 5


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """``begin(...)`` at the start of each phase, ``step(...)`` after each step, ``clear()``
    before other output. ``enabled`` is False when the mode says silent."""

    TTY_INTERVAL_S = 0.2
    FILE_INTERVAL_S = 5.0

    def __init__(self, mode: str = "auto", stream=None, clock=time.perf_counter):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = mode == "on" or (mode == "auto" and self.tty)
        self.clock = clock
        self.steady_time = 0.0      # seconds of steps after each phase's first (compile) step
        self.steady_steps = 0
        self.last, self.fresh = None, True     # time of the previous step; phase just begun
        self.printed_at = -float("inf")
        self.shown = False
        self.total = self.per_step = 0
        self.unit, self.label, self.remaining_after = "examples", "", 0
        self.other_seconds = 0.0    # seconds of other work still due (evaluations)

    def header(self, text: str) -> None:
        if self.enabled:
            self.clear()
            self.stream.write(text + "\n")
            self.stream.flush()

    def begin(self, total: int, per_step: int = 0, unit: str = "examples", label: str = "",
              remaining_after: int = 0) -> None:
        """A new phase of ``total`` steps, each of ``per_step`` ``unit``; ``remaining_after``
        steps of later phases count into the ETA."""
        self.total, self.per_step, self.unit = total, per_step, unit
        self.label, self.remaining_after = label, remaining_after
        self.last = self.clock()
        self.fresh = True           # the first step's interval holds the compile: not counted

    def rebase(self) -> None:
        """The time since the last step was not a step's (e.g. an evaluation)."""
        self.last = self.clock()

    def other_work(self, seconds_left: float) -> None:
        """Seconds of work other than steps still due in this phase, added to the ETA."""
        self.other_seconds = max(0.0, seconds_left)

    def step(self, step: int, loss: float | None = None) -> None:
        """After step ``step`` (0-based within the phase's ``total``)."""
        now = self.clock()
        if not self.fresh:          # the phase's first interval (compile) is left out
            self.steady_time += now - self.last
            self.steady_steps += 1
        self.fresh, self.last = False, now
        if not self.enabled:
            return
        done = step + 1 >= self.total
        interval = self.TTY_INTERVAL_S if self.tty else self.FILE_INTERVAL_S
        if not done and now - self.printed_at < interval:
            return
        self.printed_at = now
        self._show(self._line(step, loss))

    def _line(self, step: int, loss: float | None) -> str:
        parts = [f"{self.label}step {step + 1}/{self.total}"]
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if self.steady_steps:
            rate = self.steady_steps / max(self.steady_time, 1e-9)
            if self.per_step:
                parts.append(f"{rate * self.per_step:,.0f} {self.unit}/s")
            left = self.total - step - 1 + self.remaining_after
            provisional = self.steady_steps < PROVISIONAL_STEPS and left > 0
            parts.append(f"ETA {format_duration(left / rate + self.other_seconds)}"
                         + (" (provisional)" if provisional else ""))
        else:
            parts.append("ETA after the first step (compiling)")
        return "  ".join(parts)

    def _show(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + line.ljust(78) + " ")
            self.shown = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self.tty and self.shown:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()
            self.shown = False
