"""Dispatcher pure parts (sts.dispatcher): the pending map, reply checks, consumer counts."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from common.envelope import kid_for, new_reply_key, reply_mac, seal
from common.wire import Reply, Status
from sts.dispatcher import (
    ChannelLost,
    ConsumerCounts,
    DispatchRequest,
    PendingReplies,
    ReplyCheck,
    check_reply,
)

TENANT = str(uuid.uuid4())
AGENT_A, AGENT_B = str(uuid.uuid4()), str(uuid.uuid4())
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KID = kid_for(KEY.public_key())
OTHER_KID = kid_for(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())


def request(reply_key: bytes | None = None, tenant_id: str = TENANT) -> DispatchRequest:
    key = reply_key or new_reply_key()
    env = seal(
        password="pw",
        reply_key=key,
        recipients=[(KID, KEY.public_key())],
        request_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        username="alice@contoso.test",
        issued_at=1000.0,
        expires_at=1010.0,
    )
    return DispatchRequest(env, key, {AGENT_A: KID}, correlation_id="c")


def reply(
    request_id: str,
    key: bytes | None,
    *,
    agent_id: str = AGENT_A,
    kid: str = KID,
    status: Status = Status.SUCCESS,
) -> Reply:
    mac = reply_mac(key, request_id, agent_id, status) if key is not None else ""
    return Reply(1, request_id, agent_id, kid, status, "", 1.0, mac)


# --------------------------------------------------------------------------- the pending map


async def test_entries_remove_themselves_when_answered() -> None:
    pending = PendingReplies()
    entry = pending.add(request())
    assert len(pending) == 1 and pending.get(entry.request_id) is entry
    entry.future.set_result(reply(entry.request_id, entry.reply_key))
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert len(pending) == 0 and pending.get(entry.request_id) is None


async def test_entries_remove_themselves_on_deadline_and_cancel() -> None:
    pending = PendingReplies()
    first, second = pending.add(request()), pending.add(request())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await first.future
    second.future.cancel()
    await asyncio.sleep(0)
    assert len(pending) == 0


async def test_channel_close_fails_every_pending_future() -> None:
    pending = PendingReplies()
    entries = [pending.add(request()) for _ in range(3)]
    entries[0].future.set_result(reply(entries[0].request_id, entries[0].reply_key))
    assert pending.fail_all(ChannelLost()) == 2
    for entry in entries[1:]:
        with pytest.raises(ChannelLost):
            await entry.future
    await asyncio.sleep(0)
    assert len(pending) == 0


async def test_one_tenants_link_closing_fails_only_that_tenants_requests() -> None:
    """One link per tenant vhost: a closed channel fails its own tenant's waits at once
    and leaves the other tenants' requests pending."""
    pending = PendingReplies()
    other = str(uuid.uuid4())
    mine = [pending.add(request()) for _ in range(2)]
    theirs = pending.add(request(tenant_id=other))
    assert pending.fail_all(ChannelLost(), tenant_id=TENANT) == 2
    for entry in mine:
        with pytest.raises(ChannelLost):
            await entry.future
    assert not theirs.future.done() and theirs.request_id in pending
    theirs.future.cancel()


async def test_a_request_id_is_pending_once() -> None:
    pending = PendingReplies()
    req = request()
    pending.add(req)
    with pytest.raises(ValueError, match="already pending"):
        pending.add(req)


async def test_an_answered_entry_is_not_returned_before_its_callback_ran() -> None:
    pending = PendingReplies()
    entry = pending.add(request())
    entry.future.set_result(reply(entry.request_id, entry.reply_key))
    assert pending.get(entry.request_id) is None  # a second reply is late, not accepted


# --------------------------------------------------------------------------- reply checks

RID = str(uuid.uuid4())
RKEY = new_reply_key()
RECIPIENTS = {AGENT_A: KID}


@pytest.mark.parametrize(
    ("case", "candidate", "expected"),
    [
        ("genuine", reply(RID, RKEY), ReplyCheck.ACCEPTED),
        ("genuine failure", reply(RID, RKEY, status=Status.INVALID_CREDENTIALS),
         ReplyCheck.ACCEPTED),
        ("wrong reply key", reply(RID, new_reply_key()), ReplyCheck.BAD_MAC),
        ("MAC of another status",
         Reply(1, RID, AGENT_A, KID, Status.SUCCESS, "", 1.0,
               reply_mac(RKEY, RID, AGENT_A, Status.INVALID_CREDENTIALS)),
         ReplyCheck.BAD_MAC),
        ("MAC of another request",
         Reply(1, RID, AGENT_A, KID, Status.SUCCESS, "", 1.0,
               reply_mac(RKEY, str(uuid.uuid4()), AGENT_A, Status.SUCCESS)),
         ReplyCheck.BAD_MAC),
        ("agent of another tenant", reply(RID, RKEY, agent_id=AGENT_B),
         ReplyCheck.NOT_A_RECIPIENT),
        ("kid of another agent", reply(RID, RKEY, kid=OTHER_KID), ReplyCheck.NOT_A_RECIPIENT),
        ("unauthenticated from a recipient",
         reply(RID, None, status=Status.KEY_NOT_FOUND), ReplyCheck.ACCEPTED),
        ("unauthenticated from an unknown agent",
         reply(RID, None, agent_id=AGENT_B, status=Status.AGENT_ERROR), ReplyCheck.UNKNOWN_AGENT),
        ("unauthenticated with another kid",
         reply(RID, None, kid=OTHER_KID, status=Status.DECRYPT_FAILED), ReplyCheck.UNKNOWN_AGENT),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_check_reply(case: str, candidate: Reply, expected: ReplyCheck) -> None:
    assert check_reply(candidate, reply_key=RKEY, recipients=RECIPIENTS) is expected, case


# --------------------------------------------------------------------------- consumer counts


class FakeProbe:
    def __init__(self) -> None:
        self.count: int | None = 1
        self.calls: list[str] = []

    async def __call__(self, tenant_id: str) -> int | None:
        self.calls.append(tenant_id)
        return self.count


async def test_counts_are_cached_and_refreshed_in_the_background() -> None:
    now = [0.0]
    probe = FakeProbe()
    counts = ConsumerCounts(probe, interval_s=2, max_age_s=30, clock=lambda: now[0])
    runner = asyncio.create_task(counts.run())
    try:
        assert await counts.get("t") == 1  # first read: in line
        assert await counts.get("t") == 1 and len(probe.calls) == 1  # cached
        now[0] = 2.5
        probe.count = 3
        assert await counts.get("t") == 1  # stale but positive: answered from the cache ...
        for _ in range(10):  # ... while the background task re-reads it
            await asyncio.sleep(0)
        assert len(probe.calls) == 2
        assert await counts.get("t") == 3
    finally:
        runner.cancel()


async def test_stale_zero_and_old_counts_are_read_in_line() -> None:
    now = [0.0]
    probe = FakeProbe()
    probe.count = 0
    counts = ConsumerCounts(probe, interval_s=2, max_age_s=30, clock=lambda: now[0])
    assert await counts.get("t") == 0
    probe.count = 2
    now[0] = 2.5  # an agent may have connected since: do not answer 80001 from the cache
    assert await counts.get("t") == 2
    now[0] = 40.0
    probe.count = 5
    assert await counts.get("t") == 5  # too old to trust at all
    assert len(probe.calls) == 3


async def test_unknown_counts_are_not_cached() -> None:
    probe = FakeProbe()
    probe.count = None
    counts = ConsumerCounts(probe, interval_s=2)
    assert await counts.get("t") is None
    assert await counts.get("t") is None
    assert len(probe.calls) == 2
