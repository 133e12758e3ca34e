"""``SignInHandler``: one sign-in request from the tenant queue, end to end (docs/design.md §3.3).

For each AMQP message (aio-pika calls the handler once per delivery, concurrently up to
the channel's prefetch, which the runner sets):

0. drop (reject, no reply) a message whose AMQP ``user_id`` is not ``publisher``, the
   STS's broker user named in the bootstrap answer: RabbitMQ checks ``user_id`` against
   the publishing connection's user, and only the STS's user may publish to the tenant
   queue *and* name itself, so a request envelope copied and published again by any
   other broker user (the administrator, a tool) reaches no directory
   (``request_not_from_sts``). Replay caches are per process: without this check each
   agent of the tenant would validate such a copy once (docs/architecture.md, "Broker");
1. decode it with ``common.wire``; an undecodable body is rejected without requeue (the
   broker dead-letters it where the queue has a dead-letter exchange) and counted; if it
   still names a request id (``correlation_id`` or ``message_id``) and a ``reply_to``, the
   STS first gets ``agent_error`` without MAC so that user does not wait for the timeout;
2. drop (reject, no reply) a redelivered message: a request is handled at most once and
   an agent that died mid-request must not have it handed to another (docs/design.md §3.3;
   a second bind could count a second failed attempt against the user's lockout);
3. ``check_fresh`` before the RSA unwrap: past its deadline the request is dropped with a
   log line and no reply (the STS has already answered the user); an implausible window
   (issued in the future, too long) gets ``agent_error`` without MAC (clock skew: the STS
   is still waiting);
4. the replay cache: an id seen within its deadline is dropped (``request_replayed``);
5. ``open_`` with the agent's key: ``KeyNotFound`` and ``DecryptFailed`` are answered
   ``key_not_found`` / ``decrypt_failed`` without MAC (no reply key without decryption);
6. ``Directory.validate``, bounded by the request's deadline, which it is also given: no
   bind starts with less than ``agent.directory.BIND_MARGIN_S`` left (the answer is then
   directory_timeout, and the directory never counts a bind nobody waits for);
   ``DirectoryError`` becomes its ``status`` (directory_unavailable, directory_timeout,
   agent_error);
7. the ``Reply`` with ``elapsed_ms`` and the MAC over (request id, agent id, status) is
   published to ``pta.replies`` with the request's ``reply_to`` as routing key; then the
   message is acked. A reply that cannot be published is logged; the message is still
   acked (handled at most once).

Any unexpected exception after decoding still produces an ``agent_error`` reply (with the
MAC when the reply key is known), so a bug in the agent never leaves a user waiting for
the deadline; the handler itself never raises except ``CancelledError``.

Logging: ``correlation_id`` (the request id), ``agent_id`` and ``tenant_id`` are bound per
message; one summary line ``password_validated`` (status, detail, elapsed_ms, username)
per replied request; drops log ``request_expired``, ``request_replayed``,
``request_redelivered``, ``request_undecodable``, ``request_not_from_sts``. The password,
reply key and content key are never logged.

Wiring (``agent.runner``), once per process, the directory opened before consuming::

    directory = await LdapDirectory.open(ldap_settings)       # fails fast on bad settings
    exchange = await link.channel.get_exchange(REPLY_EXCHANGE)  # passive check, no declare
    handler = SignInHandler(agent_id=..., tenant_id=..., kid=registration.kid,
                            private_key=registration.private_key(), directory=directory,
                            exchange=exchange)
    tag = await link.queue.consume(handler)                   # manual ack (no_ack=False)

The channel's prefetch bounds concurrency (keep the directory's ``pool_size`` at or below
it). Keep one handler for the process lifetime (its replay cache must survive a link
refresh); on refresh consume on the new link's queue and ``cancel`` the old tag. On stop:
cancel the consumer, let in-flight handlers finish (``drain_timeout_s``), then
``directory.aclose()``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Final, Protocol

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractMessage
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from agent.directory import Directory, DirectoryError, Verdict
from agent.replay import Admission, ReplayCache
from common.envelope import (
    EnvelopeError,
    EnvelopeExpired,
    EnvelopeLifetimeInvalid,
    check_fresh,
    open_,
    reply_mac,
)
from common.wire import (
    MAX_DETAIL_CHARS,
    UUID_RE,
    WIRE_VERSION,
    Reply,
    RequestEnvelope,
    Status,
    WireError,
    correlation_of,
    decode_request,
    publisher_of,
    reply_message,
    trace_of,
)

__all__ = ["DEFAULT_PUBLISH_TIMEOUT_S", "ReplyPublisher", "SignInHandler"]

log = structlog.get_logger(__name__)

DEFAULT_PUBLISH_TIMEOUT_S: Final = 5.0
_MAX_ELAPSED_MS: Final = 3_600_000.0  # the wire's bound on elapsed_ms
_KID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{43}\Z")


class ReplyPublisher(Protocol):
    """Where replies go: an aio-pika exchange (``pta.replies``) or a test's capture."""

    async def publish(self, message: AbstractMessage, routing_key: str) -> object: ...


class SignInHandler:
    """Handles one sign-in request message; safe to run concurrently (one event loop).

    Implements ``agent.broker.MessageHandler``: ``await queue.consume(handler)``.
    """

    def __init__(
        self,
        *,
        agent_id: str,
        tenant_id: str,
        kid: str,
        private_key: RSAPrivateKey,
        directory: Directory,
        exchange: ReplyPublisher,
        publisher: str,
        clock: Callable[[], float] = time.time,
        replay: ReplayCache | None = None,
        publish_timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
        drop_redelivered: bool = True,
    ) -> None:
        """``clock`` is Unix time (tests pass a fake); ``kid`` is ``envelope.kid_for`` of
        the private key's public half; ``publisher`` is the STS's broker user (the
        runner updates it from each bootstrap answer; empty: every request is dropped).
        Raises ``ValueError`` for ids the wire refuses."""
        if not (UUID_RE.match(agent_id) and UUID_RE.match(tenant_id)):
            raise ValueError("agent_id and tenant_id must be canonical lowercase UUIDs")
        if not _KID_RE.match(kid):
            raise ValueError("kid must be base64url SHA-256 of the SPKI (envelope.kid_for)")
        self.agent_id = agent_id
        self.tenant_id = tenant_id
        self.kid = kid
        # Every key this agent may be addressed by: the current one and, for a while after
        # a renewal, the previous one (requests sealed before the STS switched).
        self._keys: dict[str, RSAPrivateKey] = {kid: private_key}
        self.directory = directory
        self.exchange = exchange
        self.publisher = publisher
        self.clock = clock
        self.replay = replay if replay is not None else ReplayCache()
        self.publish_timeout_s = publish_timeout_s
        self.drop_redelivered = drop_redelivered
        # Outcomes since start: each reply status, and each reason a message was dropped.
        self.counts: Counter[str] = Counter()

    def use_key(self, kid: str, private_key: RSAPrivateKey) -> None:
        """Make a renewed key the current one; the previous keys still open requests
        sealed for them until ``forget_key``."""
        if not _KID_RE.match(kid):
            raise ValueError("kid must be base64url SHA-256 of the SPKI (envelope.kid_for)")
        self._keys[kid] = private_key
        self.kid = kid

    def accept_key(self, kid: str, private_key: RSAPrivateKey) -> None:
        """Also open requests sealed for ``kid``, without making it the current key: a
        renewal's new key, from just before the CA switches the agent (the STS seals for
        it as soon as the CA has committed) until ``use_key``."""
        if not _KID_RE.match(kid):
            raise ValueError("kid must be base64url SHA-256 of the SPKI (envelope.kid_for)")
        self._keys[kid] = private_key

    def forget_key(self, kid: str) -> None:
        """Drop a previous key (never the current one)."""
        if kid != self.kid:
            self._keys.pop(kid, None)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def _private_key(self) -> RSAPrivateKey:
        """The current key (what this attribute held before renewal existed)."""
        return self._keys[self.kid]

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        """Handle one delivery and settle it; never raises except ``CancelledError``."""
        started = time.perf_counter()
        publisher = publisher_of(message)
        if not self.publisher or publisher != self.publisher:
            # Not the STS: no reply (the publisher is no STS waiting for one), no decode.
            self.counts["not_from_sts"] += 1
            with structlog.contextvars.bound_contextvars(
                agent_id=self.agent_id, tenant_id=self.tenant_id
            ):
                log.warning("request_not_from_sts", publisher=publisher, expected=self.publisher)
            await self._settle(message, ack=False)
            return
        try:
            envelope = decode_request(message.body)
        except WireError as exc:
            await self._undecodable(message, exc, started)
            return
        # correlation_id: the id the user and the STS logs show (carried in a header), so
        # one id finds both sides; request_id: this dispatch, as the STS logs it too.
        with structlog.contextvars.bound_contextvars(
            correlation_id=trace_of(message) or envelope.request_id,
            request_id=envelope.request_id,
            agent_id=self.agent_id,
            tenant_id=self.tenant_id,
        ):
            try:
                is_replied = await self._handle(message, envelope, started)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug of ours: the user still gets an answer now, not at the deadline.
                log.exception("request_failed")
                verdict = Verdict(Status.AGENT_ERROR, "unexpected agent error")
                is_replied = await self._reply(message, envelope, verdict, started, reply_key=None)
            await self._settle(message, ack=is_replied)

    # --- the steps --------------------------------------------------------------------

    async def _handle(
        self, message: AbstractIncomingMessage, envelope: RequestEnvelope, started: float
    ) -> bool:
        """Steps 2-7 of the module docstring; True when a reply was attempted."""
        if message.redelivered and self.drop_redelivered:
            return self._drop("request_redelivered", "redelivered")
        if not message.reply_to:
            return self._drop("request_without_reply_to", "no_reply_to")
        if envelope.tenant_id != self.tenant_id:
            log.warning("request_wrong_tenant", request_tenant_id=envelope.tenant_id)
            verdict = Verdict(Status.AGENT_ERROR, "request is for another tenant")
            return await self._reply(message, envelope, verdict, started, reply_key=None)
        now = self.clock()
        try:
            check_fresh(envelope, now)
        except EnvelopeExpired:
            late_s = round(now - envelope.expires_at, 3)
            return self._drop("request_expired", "expired", late_s=late_s)
        except EnvelopeLifetimeInvalid:
            detail = "request validity window is implausible: check this host's clock"
            verdict = Verdict(Status.AGENT_ERROR, detail)
            return await self._reply(message, envelope, verdict, started, reply_key=None)
        admission = self.replay.check_and_add(envelope.request_id, envelope.expires_at, now)
        if admission is Admission.REPLAYED:
            return self._drop("request_replayed", "replayed")
        if admission is Admission.FULL:
            log.error("replay_cache_full", entries=len(self.replay))
            verdict = Verdict(Status.AGENT_ERROR, "agent overloaded (replay cache full)")
            return await self._reply(message, envelope, verdict, started, reply_key=None)
        try:
            addressed = {r.kid for r in envelope.recipients}
            kid = (
                self.kid
                if self.kid in addressed
                else next((k for k in self._keys if k in addressed), self.kid)
            )
            opened = open_(envelope, self._keys[kid], kid)
        except EnvelopeError as exc:  # KeyNotFound, DecryptFailed: no reply key, no MAC
            verdict = Verdict(exc.status, str(exc))
            return await self._reply(message, envelope, verdict, started, reply_key=None)
        # The reply names the key that opened the request: the STS believes a reply only
        # from a kid the envelope was sealed for (old or new around a renewal).
        verdict = await self._validate(envelope, opened.password)
        return await self._reply(
            message, envelope, verdict, started, reply_key=opened.reply_key, kid=kid
        )

    async def _validate(self, envelope: RequestEnvelope, password: str) -> Verdict:
        """Ask the directory, within the request's deadline; faults become verdicts."""
        remaining_s = max(envelope.expires_at - self.clock(), 0.0)
        try:
            async with asyncio.timeout(remaining_s):
                return await self.directory.validate(
                    envelope.username, password, deadline=envelope.expires_at
                )
        except DirectoryError as exc:
            log.warning("directory_failed", error=str(exc), status=str(exc.status))
            reason = exc.detail.strip().strip("()") or type(exc).__name__
            return Verdict(exc.status, f"{type(exc).__name__}: {reason}")
        except TimeoutError:
            return Verdict(Status.DIRECTORY_TIMEOUT, "no answer before the request's deadline")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("validation_failed")
            return Verdict(Status.AGENT_ERROR, "unexpected agent error")

    async def _reply(
        self,
        message: AbstractIncomingMessage,
        envelope: RequestEnvelope,
        verdict: Verdict,
        started: float,
        *,
        reply_key: bytes | None,
        kid: str | None = None,
    ) -> bool:
        """Publish the reply (MAC'd when ``reply_key`` is known) and log the summary;
        ``kid`` is the key that opened the request (default: the current one)."""
        elapsed_ms = round(min((time.perf_counter() - started) * 1000, _MAX_ELAPSED_MS), 3)
        mac = (
            reply_mac(reply_key, envelope.request_id, self.agent_id, verdict.status)
            if reply_key is not None
            else ""  # only the UNAUTHENTICATED_STATUSES reach here without the key
        )
        is_sent = await self._publish(
            message.reply_to or "", envelope.request_id, verdict, elapsed_ms, mac=mac, kid=kid
        )
        self.counts[str(verdict.status)] += 1
        log.info(
            "password_validated",
            status=str(verdict.status),
            detail=verdict.detail,
            elapsed_ms=elapsed_ms,
            username=envelope.username,
            is_reply_sent=is_sent,
        )
        return True

    async def _undecodable(
        self, message: AbstractIncomingMessage, exc: WireError, started: float
    ) -> None:
        """Step 1's failure: answer if the message says whom to answer, then reject."""
        self.counts["undecodable"] += 1
        request_id = correlation_of(message)
        if request_id is None and isinstance(message.message_id, str):
            request_id = message.message_id if UUID_RE.match(message.message_id) else None
        with structlog.contextvars.bound_contextvars(
            correlation_id=request_id, agent_id=self.agent_id, tenant_id=self.tenant_id
        ):
            log.warning("request_undecodable", error=str(exc), body_bytes=len(message.body))
            try:
                if request_id is not None and message.reply_to:
                    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
                    verdict = Verdict(Status.AGENT_ERROR, "request could not be decoded")
                    await self._publish(message.reply_to, request_id, verdict, elapsed_ms, mac="")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("request_failed")
            await self._settle(message, ack=False)

    # --- helpers ----------------------------------------------------------------------

    def _drop(self, event: str, reason: str, **fields: object) -> bool:
        """Log and count a request refused without a reply; False = reject the message."""
        self.counts[reason] += 1
        log.warning(event, **fields)
        return False

    async def _publish(
        self,
        reply_to: str,
        request_id: str,
        verdict: Verdict,
        elapsed_ms: float,
        *,
        mac: str,
        kid: str | None = None,
    ) -> bool:
        """Publish one reply to ``pta.replies``; False (logged) when it could not be."""
        reply = Reply(
            v=WIRE_VERSION,
            request_id=request_id,
            agent_id=self.agent_id,
            kid=kid or self.kid,
            status=verdict.status,
            detail=verdict.detail[:MAX_DETAIL_CHARS],
            elapsed_ms=elapsed_ms,
            mac=mac,
        )
        try:
            outgoing = reply_message(reply, correlation_id=request_id)
            async with asyncio.timeout(self.publish_timeout_s):
                await self.exchange.publish(outgoing, routing_key=reply_to)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # broker gone, channel closed, unroutable with confirms
            self.counts["reply_failed"] += 1
            log.warning("reply_publish_failed", error=f"{type(exc).__name__}: {exc}"[:200])
            return False
        return True

    async def _settle(self, message: AbstractIncomingMessage, *, ack: bool) -> None:
        """Ack a handled request, reject (no requeue) a refused one; never raises."""
        try:
            if message.processed:
                return
            if ack:
                await message.ack()
            else:
                await message.reject(requeue=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # channel closed meanwhile: the broker requeues it
            log.warning("message_settle_failed", error=f"{type(exc).__name__}: {exc}"[:200])
