"""Warnings about replies the STS did not use, bounded so a flood cannot fill the disk.

Whoever can publish to `pta.replies` (any registered agent of any tenant) can send the
STS replies it will not use: forged (`reply_forged`), late or unknown (`reply_late`),
undecodable (`reply_undecodable`), or failing (`reply_failed`). Each is worth a line to an
operator, but one line per message lets one tenant's agent write megabytes a second into
the STS log that every tenant shares (issue 8, finding 5: 20,000 replies, 20,544 lines).

So these lines go through a `LogBudget`: within each window of `WINDOW_S` seconds, at
most `PER_SENDER` lines per sender and `TOTAL` lines in all are written; the rest are
only counted, and when the window ends one `reply_warnings_suppressed` line says how many
were held back, by event, and the senders with the most (at most `TOP_SENDERS`). The
sender is the agent id the reply names (claimed, not proven: a forger may rotate it,
which is why the total is capped too), or `undecodable` / `failed` for bodies that name
none. The dispatcher's counters still count every reply.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog

WINDOW_S: Final = 60.0
PER_SENDER: Final = 10
TOTAL: Final = 100
TOP_SENDERS: Final = 10
MAX_SENDERS: Final = 1024  # distinct senders counted per window; the rest share one key
OTHER_SENDERS: Final = "other"

log = structlog.get_logger("sts.dispatcher")


@dataclass(frozen=True, slots=True)
class Suppressed:
    """What one window held back."""

    lines: int
    senders: int
    by_event: dict[str, int]
    top_senders: dict[str, int]


class LogBudget:
    """Per-sender and total line budgets over fixed windows (pure: the caller passes `now`).

    A window starts with the first line after the previous one was closed; it is closed by
    `close` (which the owner calls when the window's time is up), or by the next `admit`
    after its end when it held nothing back (nothing to report then).
    """

    def __init__(
        self,
        *,
        per_sender: int = PER_SENDER,
        total: int = TOTAL,
        window_s: float = WINDOW_S,
        max_senders: int = MAX_SENDERS,
    ) -> None:
        self.per_sender = per_sender
        self.total = total
        self.window_s = window_s
        self._max_senders = max_senders
        self._started: float | None = None
        self._written: Counter[str] = Counter()
        self._held: Counter[str] = Counter()
        self._held_events: Counter[str] = Counter()

    @property
    def window_end(self) -> float | None:
        return None if self._started is None else self._started + self.window_s

    def admit(self, sender: str, event: str, now: float) -> bool:
        """True: write this line. False: it is held back and counted for the summary."""
        if self._started is None or (now >= self._started + self.window_s and not self._held):
            self._start(now)
        if sender not in self._written and len(self._written) >= self._max_senders:
            sender = OTHER_SENDERS
        if self._written[sender] < self.per_sender and self._written.total() < self.total:
            self._written[sender] += 1
            return True
        if sender not in self._held and len(self._held) >= self._max_senders:
            sender = OTHER_SENDERS
        self._held[sender] += 1
        self._held_events[event] += 1
        return False

    def close(self, now: float) -> Suppressed | None:
        """End the window: what it held back (None if nothing); the next line starts anew."""
        held, events = self._held, self._held_events
        self._started = None
        self._written, self._held, self._held_events = Counter(), Counter(), Counter()
        if not held:
            return None
        return Suppressed(
            lines=held.total(),
            senders=len(held),
            by_event=dict(events),
            top_senders=dict(held.most_common(TOP_SENDERS)),
        )

    def _start(self, now: float) -> None:
        self._started = now
        self._written.clear()


class ReplyWarnings:
    """Writes the dispatcher's reply warnings within a `LogBudget`, and the summaries.

    The summary of a window that held lines back is written when the window ends, by a
    timer started at the first line held back (so it comes even if the flood stops).
    """

    def __init__(
        self, budget: LogBudget | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._budget = budget or LogBudget()
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None

    def warning(self, event: str, *, sender: str, **fields: Any) -> None:
        """Log `event` as a warning, unless this sender's (or everyone's) budget is spent."""
        now = self._clock()
        if self._budget.admit(sender, event, now):
            log.warning(event, **fields)
        elif self._timer is None:
            end = self._budget.window_end
            delay = 0.0 if end is None else max(0.0, end - now)
            self._timer = asyncio.get_running_loop().call_later(delay, self.flush)

    def flush(self) -> None:
        """Close the window and write its summary line, if it held anything back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held = self._budget.close(self._clock())
        if held is not None:
            log.warning(
                "reply_warnings_suppressed",
                lines=held.lines,
                senders=held.senders,
                by_event=held.by_event,
                top_senders=held.top_senders,
                window_s=self._budget.window_s,
            )
