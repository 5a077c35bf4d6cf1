"""The one clock. Everything that stamps an event asks `now_s()`; tests may swap it."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

_clock: Clock = time.time


def now_s() -> float:
    """Wall-clock seconds since the epoch, from the injectable clock."""
    return _clock()


def set_clock(clock: Clock) -> Clock:
    """Replace the clock (tests only); returns the previous one so it can be restored."""
    global _clock
    previous, _clock = _clock, clock
    return previous
