"""The STS side of flow 3: publish a sealed request to the tenant's agents, match the reply.

aio-pika's request/reply pattern (`patterns/rpc.py`, docs/contributing.md), per STS process,
in three parts besides this module:
- `sts.tenant_links`: one robust connection per tenant vhost (`pta.<tenant id>`), opened on
  the first sign-in that needs it, with this process's reply queue `sts.<instance id>.<random>`
  in it; when a link's channel closes, every pending request of that tenant fails at once
  (the user is answered at once, not at the deadline);
- `sts.consumer_counts`: whether any agent listens on the tenant queue (no consumer answers
  AADSTS80001 at once instead of after the deadline);
- `sts.replies`: the pure reply check and the pending-request map.
Across links, one `request_id -> Pending` map whose entries remove themselves when their
future is done (reply, deadline, cancellation). Requests go to the default exchange with
routing key `pta.tenant.<tenant id>`, `mandatory=True`, a per-message expiration equal to
the time left to the deadline, and the AMQP `user_id` of the STS's broker user (RabbitMQ
checks it; agents handle no request without it: `common.wire.request_message`); the STS
waits for the reply until the deadline.

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

The names of the three parts stay importable from here (`sts.dispatcher.check_reply`, ...).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

import aiormq
import structlog
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from yarl import URL

from common.contracts import tenant_queue
from common.wire import Reply, Status, WireError, correlation_of, decode_reply, request_message
from sts.agent_keys import ActiveAgent, recipients_of
from sts.consumer_counts import MAX_COUNT_AGE_S, ConsumerCounts
from sts.replies import (
    ChannelLost,
    DispatchRequest,
    Pending,
    PendingReplies,
    ReplyCheck,
    UnansweredRequests,
    check_reply,
)
from sts.reply_warnings import ReplyWarnings
from sts.tenant_links import TenantLink, TenantLinks

__all__ = [
    "DISPATCHER",
    "FORGED_REPLY_CODE",
    "LATE_REPLY_CODE",
    "MAX_COUNT_AGE_S",
    "AgentDispatcher",
    "ChannelLost",
    "ConsumerCounts",
    "DispatchOutcome",
    "DispatchRequest",
    "DispatchResult",
    "Dispatcher",
    "KnownAgents",
    "LateReply",
    "Pending",
    "PendingReplies",
    "ReplyCheck",
    "TenantLink",
    "check_reply",
]

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


# --------------------------------------------------------------------------- the dispatcher


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
        # The broker user requests are published as (AMQP user_id, checked by RabbitMQ).
        self.publisher = URL(amqp_url).user or ""
        self.reply_key = f"sts.{instance_id}.{secrets.token_hex(6)}"
        self._agents = agents
        self._pending = PendingReplies()
        self._links = TenantLinks(
            amqp_url=amqp_url,
            reply_key=self.reply_key,
            on_reply=self._on_reply,
            on_close=self._on_channel_close,
            connect_timeout_s=connect_timeout_s,
        )
        self._counts = ConsumerCounts(self._links.probe, interval_s=consumer_check_interval_s)
        # Requests that timed out, kept to explain a late reply and to settle a genuine
        # one (smart lockout).
        self._unanswered = UnansweredRequests()
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
        return self._links.open

    # -- lifetime ------------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh consumer counts until cancelled (tenant links open on demand)."""
        self.ready.set()
        await self._counts.run()

    async def link(self, tenant_id: str, *, timeout_s: float) -> TenantLink | None:
        """The tenant's link (`TenantLinks.link`)."""
        return await self._links.link(tenant_id, timeout_s=timeout_s)

    def _on_channel_close(self, tenant_id: str, exc: BaseException | None) -> None:
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
        await self._links.cancel_opens()
        self._pending.fail_all(ChannelLost())
        await self._links.close()

    # -- dispatch ------------------------------------------------------------------------

    async def dispatch(self, request: DispatchRequest) -> DispatchResult:
        """Publish `request` to its tenant queue and wait for the verified reply."""
        env = request.envelope
        link = await self._links.link(env.tenant_id, timeout_s=env.expires_at - time.time())
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
        self._unanswered.remember(request)
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
        request = self._unanswered.take(reply.request_id)
        if request is None or self.on_late_reply is None:
            return
        check = check_reply(reply, reply_key=request.reply_key, recipients=request.recipients)
        if check is ReplyCheck.ACCEPTED:
            env = request.envelope
            self.on_late_reply(LateReply(env.tenant_id, env.username, reply.status, env.expires_at))

    def _late(self, reply: Reply) -> None:
        self.counters["late"] += 1
        fields: dict[str, Any] = {}
        known = self._unanswered.explain(reply.request_id)
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


DISPATCHER = web.AppKey("dispatcher", Dispatcher)
