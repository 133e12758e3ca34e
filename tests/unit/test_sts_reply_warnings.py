"""The budget of the STS's warnings about unused replies (issue 8, finding 5)."""

from __future__ import annotations

import asyncio

import structlog.testing

from sts.reply_warnings import OTHER_SENDERS, LogBudget, ReplyWarnings


def test_each_sender_gets_its_share_then_lines_are_counted() -> None:
    budget = LogBudget(per_sender=2, total=5, window_s=60)
    admitted = [budget.admit("a", "reply_forged", 0.0) for _ in range(4)]
    assert admitted == [True, True, False, False]
    assert budget.admit("b", "reply_late", 1.0)
    held = budget.close(2.0)
    assert held is not None
    assert (held.lines, held.senders, held.by_event) == (2, 1, {"reply_forged": 2})
    assert held.top_senders == {"a": 2}


def test_the_total_caps_senders_that_rotate_their_name() -> None:
    budget = LogBudget(per_sender=10, total=5, window_s=60)
    admitted = [budget.admit(f"agent-{n}", "reply_forged", 0.0) for n in range(100)]
    assert sum(admitted) == 5
    held = budget.close(1.0)
    assert held is not None and held.lines == 95


def test_senders_beyond_the_limit_share_one_key() -> None:
    budget = LogBudget(per_sender=1, total=1000, window_s=60, max_senders=3)
    for n in range(10):
        budget.admit(f"agent-{n}", "reply_late", 0.0)
        budget.admit(f"agent-{n}", "reply_late", 0.0)
    held = budget.close(1.0)
    assert held is not None and held.senders <= 4 and OTHER_SENDERS in held.top_senders


def test_a_quiet_window_ends_by_itself_and_a_busy_one_waits_for_its_summary() -> None:
    budget = LogBudget(per_sender=1, total=10, window_s=60)
    assert budget.admit("a", "reply_late", 0.0)
    assert budget.admit("a", "reply_late", 61.0)  # nothing held back: a new window
    assert not budget.admit("a", "reply_late", 62.0)
    assert not budget.admit("a", "reply_late", 200.0)  # held: the window waits for close
    assert budget.close(200.0) is not None
    assert budget.close(201.0) is None
    assert budget.admit("a", "reply_late", 202.0)


async def test_the_summary_is_written_when_the_window_ends() -> None:
    warnings = ReplyWarnings(LogBudget(per_sender=2, total=10, window_s=0.05))
    with structlog.testing.capture_logs() as logged:
        for _ in range(50):
            warnings.warning("reply_forged", sender="a", code=80003)
        assert [e["event"] for e in logged] == ["reply_forged"] * 2
        # The summary comes from the loop's timer (0.05 s, started by the first line held
        # back); a longer sleep started after it wakes only once that timer has run.
        await asyncio.sleep(0.2)
    assert len(logged) == 3
    summary = logged[2]
    assert summary["event"] == "reply_warnings_suppressed"
    assert summary["lines"] == 48 and summary["by_event"] == {"reply_forged": 48}
    assert summary["top_senders"] == {"a": 48}
