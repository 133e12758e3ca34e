"""The STS side of flow 3: publish a sealed request to the tenant's agents, match the reply.

aio-pika's request/reply pattern (`patterns/rpc.py`, docs/contributing.md), per STS process. Each
tenant has its own vhost (`pta.<tenant id>`, `common.contracts.tenant_vhost`), and an AMQP
connection reaches one vhost, so the STS keeps one `TenantLink` per tenant, opened on the
first sign-in that needs it (one open at a time per tenant; a failed open answers
AADSTS80001 and is retried with backoff by later sign-ins). Per link:
- one robust connection as the STS's own broker user (never the administrator: see
  `ca.broker_admin.sts_permissions`) and one channel, with publisher confirms and
  `on_return_raises`, so an unroutable publish (no tenant queue) fails at once
  (AADSTS80001) and a publish the queue refuses (full, `x-overflow: reject-publish`)
  fails at once too;
- one exclusive, auto-delete reply queue named `sts.<instance id>.<random>` (the same
  name in every vhost), bound to that vhost's `pta.replies` exchange (passive-declared:
  the CA declares it) with that name as routing key: it is every request's `reply_to`;
- when the channel closes, every pending request of that tenant fails at once (the user
  is answered at once, not at the deadline).
Across links, one `request_id -> Pending` map whose entries remove themselves when their
future is done (reply, deadline, cancellation). Requests go to the default exchange with
routing key `pta.tenant.<tenant id>`, `mandatory=True`, a per-message expiration equal to
the time left to the deadline, and the AMQP `user_id` of the STS's broker user (RabbitMQ
checks it; agents handle no request without it: `common.wire.request_message`); the STS
waits for the reply until the deadline.

Before publishing, the tenant queue's consumer count tells whether any agent listens: no
consumer answers AADSTS80001 at once instead of after the deadline. The count is cached
per tenant (`ConsumerCounts`) and re-read from the broker (a passive queue declare on a
separate plain channel of the tenant's link: a 404 closes that channel, never the one with
pending requests) in the background at most every `consumer_check_interval_s`; it is read
in line only the first time, when it is older than `MAX_COUNT_AGE_S`, or when it was 0 and
is stale (a tenant with no agent is failing anyway). A missing tenant queue counts 0: the
CA declares it (with the vhost) when the tenant's first agent registers; the STS may not.

Replies are checked before they are believed (docs/design.md §3.3, step 4):
1. `wire.decode_reply`; a body that does not decode is dropped and counted;
2. the AMQP correlation id must equal the body's request id;
3. the request id must be pending here; otherwise it is a late reply (after the deadline,
   or a second one): logged `reply_late` with AADSTS80014 and counted, never used;
4. `check_reply`: the agent must be one the envelope was sealed for (agent id and kid),
   and the MAC must verify with that request's reply key. Replies without a MAC are
   accepted only for `decrypt_failed`, `key_not_found` and `agent_error` from a known
   agent of the tenant (its cache is reloaded once for an agent it does not know yet,
   e.g. one registered a moment ago). Anything else is forged: counted, logged
   `reply_forged` with AADSTS80003, and ignored: the STS keeps waiting for the genuine
   reply until the deadline, and answers 80003 only if none came.

Counters (`Dispatcher.counters`: published, replied, forged, late, undecodable, failed, timeouts,
no_agent) hold numbers only, never a secret or a label from a message. They count every
reply; the warning lines about unused replies are bounded per sender and in all
(`sts.reply_warnings`), so a flood of replies cannot fill the STS's disk.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

import aio_pika
import aiormq
import aiormq.abc
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiohttp import web
from yarl import URL

from common.contracts import REPLY_EXCHANGE, tenant_queue, tenant_vhost, vhost_url
from common.envelope import verify_reply
from common.wire import (
    Reply,
    RequestEnvelope,
    Status,
    WireError,
    correlation_of,
    decode_reply,
    request_message,
)
from sts.agent_keys import ActiveAgent, recipients_of
from sts.reply_warnings import ReplyWarnings

MAX_COUNT_AGE_S: Final = 30.0
"""A consumer count older than this is re-read in line, not trusted."""

_MAX_REMEMBERED_EXPIRED: Final = 4096  # request ids kept to explain late replies
_MAX_COUNT_ENTRIES: Final = 100_000
_BACKOFF_INITIAL_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0
_RECONNECT_INTERVAL_S: Final = 1.0  # robust reconnects: sign-ins answer 80001 meanwhile
LATE_REPLY_CODE: Final = 80014
FORGED_REPLY_CODE: Final = 80003

log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------- values


class DispatchOutcome(StrEnum):
    """How one dispatch ended; only REPLIED carries an agent's answer."""

    REPLIED = "replied"
    NO_AGENT = "no_agent"  # AADSTS80001
    TIMEOUT = "timeout"  # AADSTS80002
    FORGED = "forged_reply"  # AADSTS80003: only forged replies came before the deadline


@dataclass(frozen=True, slots=True)
class LateReply:
    """A genuine reply that came after its request's deadline (the user got 80002)."""

    tenant_id: str
    username: str
    status: Status
    expires_at: float


@dataclass(frozen=True, slots=True)
class DispatchRequest:
    """A sealed request and what its reply is checked against."""

    envelope: RequestEnvelope
    reply_key: bytes = field(repr=False)
    recipients: Mapping[str, str]  # agent id -> kid, the agents it was sealed for
    correlation_id: str = ""  # the HTTP request's, for the logs only


@dataclass(frozen=True, slots=True)
class DispatchResult:
    outcome: DispatchOutcome
    reply: Reply | None = None
    detail: str = ""


class AgentDispatcher(Protocol):
    """Sends one sealed request to the tenant's agents and waits for the verified reply."""

    async def dispatch(self, request: DispatchRequest) -> DispatchResult:
        """The outcome; never raises for broker trouble (that is NO_AGENT or TIMEOUT)."""
        ...


class KnownAgents(Protocol):
    """Where an unknown agent is looked up again (sts.agent_keys.AgentKeys)."""

    async def reload(self, tenant_id: str) -> tuple[ActiveAgent, ...]: ...


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


# --------------------------------------------------------------------------- consumer counts


class ConsumerCounts:
    """Per-tenant consumer counts of the tenant queues, refreshed in the background.

    `probe(tenant_id)` asks the broker and returns the count, or None when it could not.
    """

    def __init__(
        self,
        probe: Callable[[str], Awaitable[int | None]],
        *,
        interval_s: float,
        max_age_s: float = MAX_COUNT_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._interval_s = interval_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: dict[str, tuple[float, int]] = {}
        self._wanted: set[str] = set()
        self._wake = asyncio.Event()
        self.probes = 0

    async def get(self, tenant_id: str) -> int | None:
        """The tenant queue's consumer count; None when unknown (then publish anyway)."""
        entry = self._entries.get(tenant_id)
        now = self._clock()
        if entry is None or now - entry[0] > self._max_age_s:
            return await self.refresh(tenant_id)
        age = now - entry[0]
        if age >= self._interval_s:
            if entry[1] == 0:
                return await self.refresh(tenant_id)
            self.refresh_soon(tenant_id)
        return entry[1]

    def refresh_soon(self, tenant_id: str) -> None:
        """Ask the background task to re-read this tenant's count."""
        self._wanted.add(tenant_id)
        self._wake.set()

    def forget(self, tenant_id: str) -> None:
        self._entries.pop(tenant_id, None)

    async def refresh(self, tenant_id: str) -> int | None:
        self.probes += 1
        count = await self._probe(tenant_id)
        if count is None:
            self._entries.pop(tenant_id, None)
        else:
            if len(self._entries) >= _MAX_COUNT_ENTRIES:
                self._entries.clear()
            self._entries[tenant_id] = (self._clock(), count)
        return count

    async def run(self) -> None:
        """Refresh the counts asked for, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            wanted, self._wanted = self._wanted, set()
            for tenant_id in wanted:
                entry = self._entries.get(tenant_id)
                if entry is None or self._clock() - entry[0] >= self._interval_s:
                    await self.refresh(tenant_id)


# --------------------------------------------------------------------------- the dispatcher


@dataclass(slots=True, eq=False)
class TenantLink:
    """The STS's robust connection to one tenant's vhost (`pta.<tenant id>`).

    `channel` has publisher confirms and carries requests and this process's reply queue
    in that vhost; `probe_channel` is a plain channel for passive declares (a 404 closes
    it, never `channel`).
    """

    tenant_id: str
    connection: AbstractRobustConnection
    channel: AbstractRobustChannel
    probe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    probe_channel: aiormq.abc.AbstractChannel | None = None


class Dispatcher:
    """The AMQP request/reply client of one STS process (see module docstring)."""

    def __init__(
        self,
        *,
        amqp_url: str,
        instance_id: str,
        agents: KnownAgents,
        consumer_check_interval_s: float = 2.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._amqp_url = amqp_url
        # The broker user requests are published as (AMQP user_id, checked by RabbitMQ).
        self.publisher = URL(amqp_url).user or ""
        self.reply_key = f"sts.{instance_id}.{secrets.token_hex(6)}"
        self._agents = agents
        self._connect_timeout_s = connect_timeout_s
        self._pending = PendingReplies()
        self._counts = ConsumerCounts(self._probe_consumers, interval_s=consumer_check_interval_s)
        self._links: dict[str, TenantLink] = {}
        self._opening: dict[str, asyncio.Task[TenantLink | None]] = {}
        self._retry: dict[str, tuple[float, float]] = {}  # tenant -> (not before, backoff)
        self._expired: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        # Requests that timed out, kept to settle a genuine late reply (smart lockout).
        self._unanswered: OrderedDict[str, DispatchRequest] = OrderedDict()
        self.on_late_reply: Callable[[LateReply], None] | None = None
        self.ready = asyncio.Event()  # set once running; links open per tenant on demand
        self.counters: Counter[str] = Counter()
        self.reply_warnings = ReplyWarnings()

    @property
    def pending(self) -> PendingReplies:
        return self._pending

    @property
    def consumer_counts(self) -> ConsumerCounts:
        return self._counts

    @property
    def links(self) -> Mapping[str, TenantLink]:
        """The open tenant links, by tenant id."""
        return self._links

    # -- lifetime ------------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh consumer counts until cancelled (tenant links open on demand)."""
        self.ready.set()
        await self._counts.run()

    async def link(self, tenant_id: str, *, timeout_s: float) -> TenantLink | None:
        """The tenant's link, opened on first use; None when it cannot be had in
        `timeout_s` or failed recently (retried with backoff, in the background of
        later sign-ins: one open at a time per tenant)."""
        found = self._links.get(tenant_id)
        if found is not None:
            return found
        task = self._opening.get(tenant_id)
        if task is None:
            not_before, _ = self._retry.get(tenant_id, (0.0, 0.0))
            if time.monotonic() < not_before:
                return None
            task = asyncio.get_running_loop().create_task(
                self._open_link(tenant_id), name=f"sts-link-{tenant_id}"
            )
            self._opening[tenant_id] = task
            task.add_done_callback(lambda _t: self._opening.pop(tenant_id, None))
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                # Shielded: a sign-in that gives up does not cancel the others' open.
                return await asyncio.shield(task)
        except TimeoutError:
            return None

    async def _open_link(self, tenant_id: str) -> TenantLink | None:
        """Connect to the tenant's vhost; None (logged, backoff recorded) on failure."""
        try:
            link = await self._connect(tenant_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the top of the task: log, back off, answer 80001
            _, backoff = self._retry.get(tenant_id, (0.0, _BACKOFF_INITIAL_S / 2))
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            self._retry[tenant_id] = (time.monotonic() + backoff, backoff)
            log.warning(
                "broker_connect_failed",
                tenant_id=tenant_id,
                error=f"{type(exc).__name__}: {exc}"[:200],
                retry_in_s=backoff,
            )
            return None
        self._retry.pop(tenant_id, None)
        self._links[tenant_id] = link
        return link

    async def _connect(self, tenant_id: str) -> TenantLink:
        started = time.monotonic()
        url = vhost_url(self._amqp_url, tenant_vhost(tenant_id))
        async with asyncio.timeout(self._connect_timeout_s * 2):
            connection = await aio_pika.connect_robust(
                url,
                timeout=self._connect_timeout_s,
                client_properties={"connection_name": self.reply_key},
                reconnect_interval=_RECONNECT_INTERVAL_S,
            )
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                # Passive: the CA declares the exchange; the STS may not configure it.
                exchange = await channel.get_exchange(REPLY_EXCHANGE, ensure=True)
                queue = await channel.declare_queue(
                    self.reply_key, exclusive=True, auto_delete=True
                )
                await queue.bind(exchange, routing_key=self.reply_key)
                await queue.consume(self._on_reply, no_ack=True, exclusive=True)
        except BaseException:
            await connection.close()
            raise
        assert isinstance(channel, AbstractRobustChannel)  # connect_robust's channels are
        on_close = functools.partial(self._on_channel_close, tenant_id)
        channel.close_callbacks.add(on_close)
        connection.close_callbacks.add(on_close)
        log.info(
            "broker_connected",
            tenant_id=tenant_id,
            reply_queue=self.reply_key,
            open_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return TenantLink(tenant_id, connection, channel)

    def _on_channel_close(
        self, tenant_id: str, _sender: object, exc: BaseException | None = None
    ) -> None:
        failed = self._pending.fail_all(ChannelLost(), tenant_id=tenant_id)
        if failed:
            log.warning(
                "broker_channel_closed",
                tenant_id=tenant_id,
                failed_requests=failed,
                error=repr(exc)[:200],
            )

    async def close(self) -> None:
        """Fail what is pending and close every tenant link."""
        self.ready.clear()
        opening = list(self._opening.values())
        for task in opening:
            task.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        self._pending.fail_all(ChannelLost())
        links, self._links = list(self._links.values()), {}
        for link in links:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    await link.connection.close()
            except TimeoutError:
                log.warning("broker_close_timeout", tenant_id=link.tenant_id)

    # -- dispatch ------------------------------------------------------------------------

    async def dispatch(self, request: DispatchRequest) -> DispatchResult:
        """Publish `request` to its tenant queue and wait for the verified reply."""
        env = request.envelope
        link = await self.link(env.tenant_id, timeout_s=env.expires_at - time.time())
        if link is None or link.channel.is_closed:
            return self._no_agent("not connected to the tenant's vhost on the broker")
        channel = link.channel
        count = await self._counts.get(env.tenant_id)
        if count == 0:
            return self._no_agent("no agent is connected to the tenant's queue")
        remaining_s = env.expires_at - time.time()
        if remaining_s <= 0:
            return self._timeout(request, forged=0)
        pending = self._pending.add(request)
        is_published = False
        try:
            async with asyncio.timeout(remaining_s):
                message = request_message(
                    env,
                    reply_to=self.reply_key,
                    correlation_id=env.request_id,
                    expiration_s=remaining_s,
                    publisher=self.publisher,
                    trace_id=request.correlation_id or None,
                )
                await channel.default_exchange.publish(
                    message, routing_key=tenant_queue(env.tenant_id), mandatory=True
                )
                is_published = True
                self.counters["published"] += 1
                reply = await pending.future
        except aiormq.exceptions.PublishError:
            self._counts.forget(env.tenant_id)
            return self._no_agent("the tenant's queue does not exist (request returned)")
        except aiormq.exceptions.DeliveryError:
            return self._no_agent("the tenant's queue refused the request (full)")
        except ChannelLost:
            return self._no_agent("the connection to the broker was lost")
        except TimeoutError:
            if not is_published:
                log.warning("request_publish_timeout", tenant_id=env.tenant_id)
            self._counts.refresh_soon(env.tenant_id)
            return self._timeout(request, forged=pending.forged)
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
                ConnectionError) as exc:  # fmt: skip
            return self._no_agent(f"broker unavailable ({type(exc).__name__})")
        finally:
            if not pending.future.done():
                pending.future.cancel()
        return DispatchResult(DispatchOutcome.REPLIED, reply)

    def _no_agent(self, detail: str) -> DispatchResult:
        self.counters["no_agent"] += 1
        return DispatchResult(DispatchOutcome.NO_AGENT, detail=detail)

    def _timeout(self, request: DispatchRequest, *, forged: int) -> DispatchResult:
        env = request.envelope
        self._expired[env.request_id] = (request.correlation_id, env.tenant_id, env.expires_at)
        while len(self._expired) > _MAX_REMEMBERED_EXPIRED:
            self._expired.popitem(last=False)
        self._unanswered[env.request_id] = request
        while len(self._unanswered) > _MAX_REMEMBERED_EXPIRED:
            self._unanswered.popitem(last=False)
        if forged:
            return DispatchResult(
                DispatchOutcome.FORGED, detail=f"{forged} forged replies and no genuine one"
            )
        self.counters["timeouts"] += 1
        return DispatchResult(DispatchOutcome.TIMEOUT, detail="no reply before the deadline")

    # -- replies -------------------------------------------------------------------------

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        """Consumer of the reply queue (no_ack): check, then resolve or drop; never raises."""
        try:
            await self._handle_reply(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the top of a consumer: log and go on with the next reply
            self.counters["failed"] += 1
            self.reply_warnings.warning(
                "reply_failed", sender="failed", error=type(exc).__name__, exc_info=exc
            )

    async def _handle_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            reply = decode_reply(message.body)
        except WireError as exc:
            self.counters["undecodable"] += 1
            self.reply_warnings.warning(
                "reply_undecodable",
                sender="undecodable",
                error=str(exc)[:200],
                body_bytes=len(message.body),
            )
            return
        pending = self._pending.get(reply.request_id)
        if correlation_of(message) != reply.request_id:
            self._forged(reply, pending, "correlation id differs from the request id")
            return
        if pending is None:
            self._settle_late(reply)
            self._late(reply)
            return
        check = check_reply(reply, reply_key=pending.reply_key, recipients=pending.recipients)
        if check is ReplyCheck.UNKNOWN_AGENT:
            # An unauthenticated failure from an agent the envelope did not name: maybe one
            # registered a moment ago. Accept it only if the tenant really has it.
            agents = await self._agents.reload(pending.tenant_id)
            check = check_reply(
                reply, reply_key=pending.reply_key, recipients=recipients_of(agents)
            )
            if pending.future.done():
                self._late(reply)
                return
        if check is not ReplyCheck.ACCEPTED:
            self._forged(reply, pending, str(check))
            return
        self.counters["replied"] += 1
        pending.future.set_result(reply)

    def _forged(self, reply: Reply, pending: Pending | None, reason: str) -> None:
        self.counters["forged"] += 1
        fields: dict[str, Any] = {}
        if pending is not None:
            pending.forged += 1
            fields = {"correlation_id": pending.correlation_id, "tenant_id": pending.tenant_id}
        self.reply_warnings.warning(
            "reply_forged",
            sender=reply.agent_id,
            code=FORGED_REPLY_CODE,
            reason=reason,
            request_id=reply.request_id,
            agent_id=reply.agent_id,
            status=str(reply.status),
            **fields,
        )

    def _settle_late(self, reply: Reply) -> None:
        """Hand a genuine (MAC-checked) late reply to `on_late_reply`, once.

        The directory saw that bind even though the user was answered 80002: smart lockout
        counts it now (issue 8 finding 10). A reply that does not check is only logged.
        """
        request = self._unanswered.pop(reply.request_id, None)
        if request is None or self.on_late_reply is None:
            return
        check = check_reply(reply, reply_key=request.reply_key, recipients=request.recipients)
        if check is ReplyCheck.ACCEPTED:
            env = request.envelope
            self.on_late_reply(LateReply(env.tenant_id, env.username, reply.status, env.expires_at))

    def _late(self, reply: Reply) -> None:
        self.counters["late"] += 1
        fields: dict[str, Any] = {}
        known = self._expired.get(reply.request_id)
        if known is not None:
            correlation_id, tenant_id, expires_at = known
            fields = {
                "correlation_id": correlation_id,
                "tenant_id": tenant_id,
                "late_ms": round((time.time() - expires_at) * 1000, 1),
            }
        self.reply_warnings.warning(
            "reply_late",
            sender=reply.agent_id,
            code=LATE_REPLY_CODE,
            request_id=reply.request_id,
            agent_id=reply.agent_id,
            status=str(reply.status),
            is_known_request=known is not None,
            **fields,
        )

    # -- consumer counts -----------------------------------------------------------------

    async def _probe_consumers(self, tenant_id: str) -> int | None:
        """Passive-declare the tenant queue for its consumer count (0 when it is missing:
        the CA declares it when the tenant's first agent registers; the STS may not)."""
        link = self._links.get(tenant_id)
        if link is None:
            return None
        name = tenant_queue(tenant_id)
        async with link.probe_lock:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    channel = await self._probe(link)
                    declared = await channel.queue_declare(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                link.probe_channel = None  # a 404 closed it
                return 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker trouble: unknown count, publish decides
                link.probe_channel = None
                log.warning(
                    "consumer_count_failed",
                    tenant_id=tenant_id,
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
                return None
        count = declared.consumer_count
        return None if count is None else int(count)

    async def _probe(self, link: TenantLink) -> aiormq.abc.AbstractChannel:
        """A plain (not robust) channel for passive declares, opened when needed."""
        channel = link.probe_channel
        if channel is not None and not channel.is_closed:
            return channel
        transport = link.connection.transport
        if transport is None:
            raise ConnectionError("not connected to the broker")
        channel = await transport.connection.channel(publisher_confirms=False)
        link.probe_channel = channel
        return channel


DISPATCHER = web.AppKey("dispatcher", Dispatcher)
