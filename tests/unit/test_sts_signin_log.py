"""The sign-in log writer (sts.signin_log): batches, bounded queue, failures, shutdown."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import structlog

from sts.queries import SignInRecord
from sts.signin_log import SignInLog


def record(i: int = 0) -> SignInRecord:
    return SignInRecord(
        at=dt.datetime.now(dt.UTC), tenant_id=uuid.uuid4(), username=f"u{i}@contoso.test",
        user_id=None, result="success", code=0, detail="", agent_id=None, latency_ms=1.0,
        client_ip="", correlation_id="", request_id=None, client_id="", flow="password_grant",
    )  # fmt: skip


@dataclass
class FakeDb:
    batches: list[int] = field(default_factory=list)
    fail_next: bool = False
    gate: asyncio.Event | None = None
    written: asyncio.Event = field(default_factory=asyncio.Event)

    async def insert_sign_ins(self, records: Sequence[SignInRecord]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database gone")
        self.batches.append(len(records))
        self.written.set()


def writer(db: FakeDb, **kw: float) -> SignInLog:
    return SignInLog(
        db,  # type: ignore[arg-type]
        batch=int(kw.get("batch", 200)),
        flush_interval_s=kw.get("interval", 60.0),
        queue_size=int(kw.get("queue_size", 10_000)),
    )


async def test_a_full_batch_is_written_without_waiting_for_the_interval() -> None:
    db = FakeDb()
    log = writer(db, batch=200, interval=60)
    for i in range(450):
        log.add(record(i))
    task = asyncio.create_task(log.run())
    try:
        async with asyncio.timeout(2):
            while sum(db.batches) < 400:
                await db.written.wait()
                db.written.clear()
        assert db.batches[:2] == [200, 200]
    finally:
        task.cancel()
    await log.close(timeout_s=1)
    assert db.batches == [200, 200, 50] and log.stats["rows"] == 450
    assert log.stats["batches"] == 3 and len(log) == 0


async def test_a_trickle_is_written_once_per_interval() -> None:
    db = FakeDb()
    log = writer(db, batch=200, interval=0.05)
    task = asyncio.create_task(log.run())
    try:
        for i in range(5):
            log.add(record(i))
        async with asyncio.timeout(2):
            await db.written.wait()
        assert db.batches == [5]
    finally:
        task.cancel()


async def test_rows_arriving_during_a_write_wait_for_the_next_batch() -> None:
    db = FakeDb(gate=asyncio.Event())
    log = writer(db, batch=3, interval=60)
    for i in range(3):
        log.add(record(i))
    task = asyncio.create_task(log.run())
    try:
        await asyncio.sleep(0)  # let the writer take the first batch and block on the gate
        await asyncio.sleep(0)
        log.add(record(9))  # arrives while the first batch is being written
        db.gate.set()  # type: ignore[union-attr]
        async with asyncio.timeout(2):
            await db.written.wait()
        await asyncio.sleep(0)
        assert db.batches == [3] and len(log) == 1  # not written as a batch of one
    finally:
        task.cancel()
    await log.close(timeout_s=1)
    assert db.batches == [3, 1]


async def test_a_full_queue_drops_and_warns_without_blocking() -> None:
    log = writer(FakeDb(), queue_size=10)
    with structlog.testing.capture_logs() as events:
        for i in range(15):
            log.add(record(i))
    assert len(log) == 10 and log.stats["dropped"] == 5
    assert [e["event"] for e in events] == ["sign_in_log_dropped"]  # once, not per row


async def test_a_failed_batch_is_counted_and_the_writer_goes_on() -> None:
    db = FakeDb(fail_next=True)
    log = writer(db, batch=2)
    for i in range(4):
        log.add(record(i))
    with structlog.testing.capture_logs() as events:
        await log.flush()
    assert log.stats["failed"] == 2 and db.batches == [2]
    assert any(e["event"] == "sign_in_log_write_failed" for e in events)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="batch"):
        writer(FakeDb(), batch=0)
