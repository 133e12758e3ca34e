"""Replies the STS waits for: the pure reply check and the map of pending requests.

Part of the dispatcher (`sts.dispatcher`). Replies are checked before they are believed
(docs/design.md §3.3, step 4): `check_reply` decides whether a decoded reply is the
genuine answer to the request it names; `PendingReplies` holds the requests still
waiting, each entry removing itself when its future is done (reply, deadline,
cancellation); `UnansweredRequests` remembers requests that timed out, to explain (and,
for genuine ones, settle) a reply that comes after the deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from cachetools import FIFOCache

from common.envelope import verify_reply
from common.wire import Reply, RequestEnvelope

MAX_REMEMBERED_EXPIRED: Final = 4096  # request ids kept to explain late replies


@dataclass(frozen=True, slots=True)
class DispatchRequest:
    """A sealed request and what its reply is checked against."""

    envelope: RequestEnvelope
    reply_key: bytes = field(repr=False)
    recipients: Mapping[str, str]  # agent id -> kid, the agents it was sealed for
    correlation_id: str = ""  # the HTTP request's, for the logs only


class ChannelLost(Exception):
    """The channel to the broker closed while the request was pending."""


# --------------------------------------------------------------------------- reply checks


class ReplyCheck(StrEnum):
    ACCEPTED = "accepted"
    BAD_MAC = "bad_mac"
    NOT_A_RECIPIENT = "not_a_recipient"  # another tenant's agent, or a kid that differs
    UNKNOWN_AGENT = "unknown_agent"  # no MAC, agent not among the recipients: look again


def check_reply(reply: Reply, *, reply_key: bytes, recipients: Mapping[str, str]) -> ReplyCheck:
    """Decide whether `reply` is the genuine answer to the request it names (pure).

    `recipients` maps agent id -> kid of the agents the envelope was sealed for. The
    wire decoder already refused a reply without MAC unless its status is one of
    `UNAUTHENTICATED_STATUSES`.
    """
    kid = recipients.get(reply.agent_id)
    if not reply.mac:
        return ReplyCheck.ACCEPTED if kid == reply.kid else ReplyCheck.UNKNOWN_AGENT
    if kid is None or kid != reply.kid:
        return ReplyCheck.NOT_A_RECIPIENT
    if not verify_reply(reply, reply_key):
        return ReplyCheck.BAD_MAC
    return ReplyCheck.ACCEPTED


# --------------------------------------------------------------------------- pending map


@dataclass(slots=True, eq=False)
class Pending:
    """One request waiting for its reply."""

    request_id: str
    tenant_id: str
    reply_key: bytes = field(repr=False)
    recipients: Mapping[str, str]
    correlation_id: str
    expires_at: float
    future: asyncio.Future[Reply]
    forged: int = 0


class PendingReplies:
    """The request_id -> Pending map; an entry removes itself when its future is done."""

    def __init__(self) -> None:
        self._entries: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._entries

    def add(self, request: DispatchRequest) -> Pending:
        """Register a request; raises ValueError if its id is already pending."""
        env = request.envelope
        if env.request_id in self._entries:
            raise ValueError("request id already pending")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        pending = Pending(
            request_id=env.request_id,
            tenant_id=env.tenant_id,
            reply_key=request.reply_key,
            recipients=request.recipients,
            correlation_id=request.correlation_id,
            expires_at=env.expires_at,
            future=future,
        )
        self._entries[env.request_id] = pending
        future.add_done_callback(lambda _f: self._remove(pending))
        return pending

    def get(self, request_id: str) -> Pending | None:
        """The pending request, or None when unknown or already answered."""
        pending = self._entries.get(request_id)
        return None if pending is None or pending.future.done() else pending

    def fail_all(self, exc: BaseException, *, tenant_id: str | None = None) -> int:
        """Fail every pending future (the channel closed), or only `tenant_id`'s (that
        tenant's link closed); returns how many."""
        failed = 0
        for pending in list(self._entries.values()):
            if tenant_id is not None and pending.tenant_id != tenant_id:
                continue
            if not pending.future.done():
                pending.future.set_exception(exc)
                pending.future.exception()  # mark retrieved: the waiter may be gone
                failed += 1
        return failed

    def _remove(self, pending: Pending) -> None:
        if self._entries.get(pending.request_id) is pending:
            del self._entries[pending.request_id]


# --------------------------------------------------------------------------- timed out


class UnansweredRequests:
    """Requests that timed out, newest `MAX_REMEMBERED_EXPIRED` kept (first in, first out).

    `explain(request_id)` gives what a `reply_late` line names (correlation id, tenant,
    deadline); `take(request_id)` hands the request back once, so a genuine late reply can
    be settled (smart lockout counts the bind the directory saw).
    """

    def __init__(self, maxsize: int = MAX_REMEMBERED_EXPIRED) -> None:
        self._expired: FIFOCache[str, tuple[str, str, float]] = FIFOCache(maxsize)
        self._unanswered: FIFOCache[str, DispatchRequest] = FIFOCache(maxsize)

    def remember(self, request: DispatchRequest) -> None:
        env = request.envelope
        self._expired[env.request_id] = (request.correlation_id, env.tenant_id, env.expires_at)
        self._unanswered[env.request_id] = request

    def explain(self, request_id: str) -> tuple[str, str, float] | None:
        """(correlation id, tenant id, expires_at) of a request that timed out, if kept."""
        return self._expired.get(request_id)

    def take(self, request_id: str) -> DispatchRequest | None:
        """The timed-out request, once (None when unknown or already taken)."""
        return self._unanswered.pop(request_id, None)
