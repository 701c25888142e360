"""Console lines of the data wing, and progress with a time estimate for long work.

``say`` prints ``[hybridpool] <msg>`` like :func:`hybridpool.run.console.say` (``data/`` does not import ``run/``),
on the first process of a distributed run only. :class:`Progress` prints, every ``every_s`` seconds of a long
pass, ``"<what>: 1280/5994 images, 41 s elapsed, about 2 min 10 s left (ETA 14:03 UTC)"``; a pass shorter than
``every_s`` prints nothing. The clock is injectable (``clock.monotonic()``, ``clock.time()``; the ``time`` module
by default), so the lines can be tested without sleeping.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["Progress", "eta_text", "format_duration", "format_eta", "say"]


def _rank() -> int:
    """The global rank of this process (0 outside distributed runs), as Lightning sees it."""
    try:
        from pytorch_lightning.utilities import rank_zero_only

        return int(getattr(rank_zero_only, "rank", 0) or 0)
    except ImportError:  # pragma: no cover - Lightning is a dependency of data/
        return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)) or 0)


def say(msg: str) -> None:
    """Print ``[hybridpool] msg`` at once, on global rank 0 only."""
    if _rank() == 0:
        print(f"[hybridpool] {msg}", flush=True)


def format_duration(seconds: float) -> str:
    """``41 s``, ``2 min 10 s``, ``1 h 05 min`` (rounded to the second; negative counts as 0)."""
    s = max(0, round(float(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, s = divmod(s, 60)
        return f"{m} min {s} s" if s else f"{m} min"
    h, rest = divmod(s, 3600)
    return f"{h} h {rest // 60:02d} min"


def format_eta(unix_seconds: float, now_unix: float | None = None) -> str:
    """The clock time ``unix_seconds`` in UTC: ``14:03 UTC``, with the date when it is not today's
    (``2026-03-02 14:03 UTC``; today is the date of ``now_unix``, default now)."""
    when = time.gmtime(unix_seconds)
    today = time.gmtime(time.time() if now_unix is None else now_unix)
    if when[:3] == today[:3]:
        return time.strftime("%H:%M UTC", when)
    return time.strftime("%Y-%m-%d %H:%M UTC", when)


def eta_text(elapsed_s: float, fraction_done: float, now_unix: float) -> str:
    """``"41 s elapsed, about 2 min 10 s left (ETA 14:03 UTC)"`` from the time spent and the share of the work
    done (linear extrapolation); ``"41 s elapsed"`` alone while nothing is done yet."""
    text = f"{format_duration(elapsed_s)} elapsed"
    if not fraction_done > 0.0:
        return text
    left = elapsed_s * (1.0 - min(1.0, fraction_done)) / fraction_done
    return f"{text}, about {format_duration(left)} left (ETA {format_eta(now_unix + left, now_unix)})"


class Progress:
    """Progress lines of one long pass over ``total`` items: at most one every ``every_s`` seconds.

    Args:
        what: what is being done (``"caching train features"``), the start of each line.
        total: the number of items of the pass.
        unit: the name of an item (``"images"``).
        every_s: seconds between lines; the first comes after ``every_s`` seconds, so a short pass prints nothing.
        clock: an object with ``monotonic()`` and ``time()`` (the ``time`` module by default).
        emit: where a line goes (:func:`say` by default).

    ``advance(n)`` after each batch of ``n`` items; ``finish()`` at the end prints how long the pass took, if it
    printed anything before.
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "items",
        every_s: float = 30.0,
        clock: Any = time,
        emit: Any = say,
    ) -> None:
        self.what = what
        self.total = int(total)
        self.unit = unit
        self.every_s = float(every_s)
        self.clock = clock
        self.emit = emit
        self.done = 0
        self.lines = 0
        self._start = clock.monotonic()
        self._last = self._start

    def advance(self, n: int = 1) -> None:
        """``n`` more items are done; print a line when ``every_s`` seconds passed since the last one."""
        self.done += int(n)
        now = self.clock.monotonic()
        if now - self._last < self.every_s or self.done >= self.total:
            return  # not yet, or done (finish() says how long it took)
        self._last = now
        fraction = self.done / self.total if self.total > 0 else 0.0
        eta = eta_text(now - self._start, fraction, self.clock.time())
        self.emit(f"{self.what}: {self.done}/{self.total} {self.unit}, {eta}")
        self.lines += 1

    def finish(self) -> None:
        """Say how long the pass took (only when it was long enough to print progress)."""
        if self.lines:
            took = format_duration(self.clock.monotonic() - self._start)
            self.emit(f"{self.what}: {self.done}/{self.total} {self.unit} in {took}")
