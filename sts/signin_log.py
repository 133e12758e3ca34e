"""The sign-in log: one row per password validation in `sign_ins`, written off the hot path.

docs/design.md §3.3, step 4: every sign-in is logged with its result and latency. A sign-in
only appends a row to an in-memory queue (`add`, never awaits, never blocks); a background
task (`run`) writes the queue with one COPY per batch: as soon as `batch` rows are waiting,
or `flush_interval_s` (~200 ms) after the first one arrived. The queue is bounded: when it
is full (the database is down or slower than the sign-ins) new rows are dropped and
counted, with a warning on the first drop and every 1,000th after it: a sign-in never
waits for its log row. A batch the database refuses is dropped too (logged, counted), so a
poisoned batch cannot stall the log. `close` writes what is left at shutdown.

Rows carry no secret: the password never reaches this module, and `detail` is the agent's
short operator text (docs/design.md §4: never a secret).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Final

import structlog
from aiohttp import web

from sts.queries import Database, SignInRecord

_DROP_LOG_EVERY: Final = 1000

log = structlog.get_logger(__name__)


class SignInLog:
    """A bounded queue of sign-in rows and the task that writes them in batches."""

    def __init__(
        self, db: Database, *, batch: int, flush_interval_s: float, queue_size: int
    ) -> None:
        if batch < 1 or queue_size < 1 or flush_interval_s <= 0:
            raise ValueError("batch and queue_size must be >= 1, flush_interval_s > 0")
        self._db = db
        self._batch = batch
        self._interval_s = flush_interval_s
        self._queue_size = queue_size
        self._pending: deque[SignInRecord] = deque()
        self._has_rows = asyncio.Event()
        self._is_full = asyncio.Event()
        self._lock = asyncio.Lock()
        self.stats: dict[str, int] = {"rows": 0, "batches": 0, "dropped": 0, "failed": 0}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, record: SignInRecord) -> None:
        """Queue one row; drops it (counted, warned) when the queue is full. Never blocks."""
        if len(self._pending) >= self._queue_size:
            self.stats["dropped"] += 1
            if self.stats["dropped"] % _DROP_LOG_EVERY == 1:
                log.warning(
                    "sign_in_log_dropped",
                    dropped=self.stats["dropped"],
                    queue_size=self._queue_size,
                )
            return
        self._pending.append(record)
        self._has_rows.set()
        if len(self._pending) >= self._batch:
            self._is_full.set()

    async def run(self) -> None:
        """Write batches until cancelled (the app's cleanup then calls `close`).

        Each cycle writes only the rows queued when it starts: rows that arrive during a
        write wait for the next full batch or interval, so a steady trickle is still
        written in batches rather than one row at a time.
        """
        while True:
            await self._has_rows.wait()
            if len(self._pending) < self._batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval_s):
                        await self._is_full.wait()
            await self.flush(limit=len(self._pending))

    async def flush(self, limit: int | None = None) -> None:
        """Write the rows queued now (at most `limit`), in batches of at most `batch`."""
        async with self._lock:
            left = len(self._pending) if limit is None else min(limit, len(self._pending))
            while left > 0:
                count = min(self._batch, left)
                rows = [self._pending.popleft() for _ in range(count)]
                left -= count
                if not self._pending:
                    self._has_rows.clear()
                if len(self._pending) < self._batch:
                    self._is_full.clear()
                await self._write(rows)

    async def _write(self, rows: list[SignInRecord]) -> None:
        try:
            await self._db.insert_sign_ins(rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the top of the writer: drop the batch, keep logging
            self.stats["failed"] += len(rows)
            log.warning(
                "sign_in_log_write_failed",
                rows=len(rows),
                error=f"{type(exc).__name__}: {exc}"[:200],
            )
            return
        self.stats["rows"] += len(rows)
        self.stats["batches"] += 1

    async def close(self, timeout_s: float) -> None:
        """Write what is left (at shutdown, after `run` was cancelled), within a bound."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.flush()
        except TimeoutError:
            log.warning("sign_in_log_unflushed", rows=len(self._pending))


SIGN_IN_LOG = web.AppKey("sign_in_log", SignInLog)
