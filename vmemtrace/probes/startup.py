"""Where start-up goes: named spans of the way from the process's start to attached probes.

The compile runs in a thread of its own beside the reading of the kernel's facts, so the spans
overlap; each is kept with its start and end on one clock (monotonic), from the moment the
process started, which the kernel records (/proc/self/stat starttime) and which no code of ours
can see run: the interpreter and its imports come first.
"""

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field


def process_age() -> float:
    """Seconds since this process started: its start time (clock ticks after boot, field 22 of
    /proc/self/stat, fs/proc/array.c) against CLOCK_BOOTTIME, the clock it is counted on; 0
    where it cannot be read."""
    try:
        with open("/proc/self/stat") as fh:
            after_comm = fh.read().rsplit(")", 1)[1].split()
        started = int(after_comm[19]) / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


# Spans kept at most: the exporter attaches again on every reload, for as long as it runs.
MAX_SPANS = 256


@dataclass
class Timeline:
    """Spans (name, start, end) in seconds on the monotonic clock, measured from `origin`."""

    origin: float
    spans: list[tuple[str, float, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_process_start(cls) -> "Timeline":
        return cls(time.monotonic() - process_age())

    def add(self, name: str, start: float, end: float) -> None:
        with self._lock:
            if len(self.spans) < MAX_SPANS:
                self.spans.append((name, start, end))

    @contextmanager
    def span(self, name: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, start, time.monotonic())

    def since_start(self, name: str) -> None:
        """A span from the process's start to now: what ran before any of our code could."""
        self.add(name, self.origin, time.monotonic())

    def rows(self) -> list[dict]:
        """The spans in the order they started, in seconds from the process's start."""
        with self._lock:
            spans = sorted(self.spans, key=lambda s: s[1])
        return [{"phase": name, "start": round(start - self.origin, 3),
                 "end": round(end - self.origin, 3), "seconds": round(end - start, 3)}
                for name, start, end in spans]


# The one timeline of this process's start-up: the compile, the tracer and the session add to it.
STARTUP = Timeline.from_process_start()
