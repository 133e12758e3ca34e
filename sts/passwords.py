"""`AgentPasswordValidator`: the `sts.signin.PasswordValidator` of synced users.

One call is one sign-in attempt (docs/design.md §3.3), in this order, the first answer wins:
1. the user: the typed name normalised once (`common.usernames`), then a synced user of
   this tenant (`users`, tenant-scoped, with their lockout state in the same query);
   unknown is AADSTS50034, and no agent is asked;
2. smart lockout (`sts.lockout`): a locked user is AADSTS50053, no agent is asked;
3. an empty password is AADSTS50126 at once, never sent (an LDAP simple bind with an
   empty password is an anonymous bind and "succeeds": docs/design.md §7); so is
   a recent wrong password of this user (`LockoutPolicy.is_repeat`): the directory
   never counts a stale password twice; then a place in flight (`LockoutStore.enter`);
4. the envelope: sealed (`common.envelope.seal`) for every active agent of the tenant
   (`sts.agent_keys`) with a fresh request id and reply key, deadline `request_timeout_s`;
   no active agent (or no broker configured) is AADSTS80001;
5. dispatch (`sts.dispatcher`) and the agent's answer mapped by the table of docs/design.md §5
   (`error_for`);
6. lockout bookkeeping: `invalid_credentials` counts a failure, `success` clears them,
   an attempt nobody answered counts as a failure (`Settlement.UNANSWERED`);
   unknown users and recent wrong passwords are answered after a delay drawn from the
   tenant's recent agent round trips (`RoundTrips`), so time tells no more than the code;
7. one sign-in log row (`sts.signin_log`, off the hot path) and one `sign_in` log line
   with outcome, AADSTS code, agent id and latency (the correlation id is in the context).

The `result` of the log is the agent's status or one of `StsOutcome`. Database trouble
raises `DatabaseUnavailable` (503) and is logged as result `error`. A lockout write that
fails after the agent answered is logged, not fatal: the user gets the agent's answer.

The password lives only in this call: it goes into the envelope and, when a lockout
secret is configured, into a keyed fingerprint; never into a log, row or exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog
from aiohttp import web
from cachetools import FIFOCache

from common.envelope import new_reply_key, seal
from common.usernames import canonical_username, is_user_name
from common.wire import Status
from sts.admins import ADMINS
from sts.agent_keys import AGENT_KEYS, AgentKeys, recipients_of
from sts.dispatcher import (
    DISPATCHER,
    AgentDispatcher,
    Dispatcher,
    DispatchOutcome,
    DispatchRequest,
    LateReply,
)
from sts.errors import (
    AGENT_STATUS_ERRORS,
    AgentReplyInvalid,
    AgentTimeout,
    DatabaseUnavailable,
    InvalidCredentials,
    NoAgentAvailable,
    OAuthError,
    SmartLockout,
    UserNotFound,
)
from sts.lockout import (
    IN_FLIGHT_MARGIN_S,
    LOCKOUT,
    Admission,
    LockoutStore,
    Settlement,
    state_from_row,
    user_key,
)
from sts.queries import DATABASE, Database, SignInRecord, SignInUserRow
from sts.settings import SETTINGS
from sts.signin import PASSWORD_VALIDATOR, SignedInUser, SignInContext
from sts.signin_log import SIGN_IN_LOG, SignInLog
from sts.tenants import Tenant

log = structlog.get_logger(__name__)

SUCCESS = str(Status.SUCCESS)
ERROR = "error"  # a fault (database, bug): the raised error's code is logged
_START_WAIT_S = 5.0  # how long the start waits for LISTEN and the broker, at most


class StsOutcome(StrEnum):
    """Results decided by the STS itself, before or instead of an agent's answer."""

    USER_NOT_FOUND = "user_not_found"
    SMART_LOCKOUT = "smart_lockout"
    EMPTY_PASSWORD = "empty_password"  # noqa: S105 -- an outcome name, not a password
    PASSWORD_REFUSED = "password_refused"  # noqa: S105 -- cannot be sealed (too long)
    NO_AGENT = "no_agent"
    TIMEOUT = "timeout"
    FORGED_REPLY = "forged_reply"
    REPEATED_PASSWORD = "repeated_password"  # noqa: S105 -- a recent wrong one, not sent


STS_OUTCOME_ERRORS: dict[StsOutcome, type[OAuthError]] = {
    StsOutcome.USER_NOT_FOUND: UserNotFound,
    StsOutcome.SMART_LOCKOUT: SmartLockout,
    StsOutcome.EMPTY_PASSWORD: InvalidCredentials,
    StsOutcome.PASSWORD_REFUSED: InvalidCredentials,
    StsOutcome.NO_AGENT: NoAgentAvailable,
    StsOutcome.TIMEOUT: AgentTimeout,
    StsOutcome.FORGED_REPLY: AgentReplyInvalid,
    StsOutcome.REPEATED_PASSWORD: InvalidCredentials,
}
"""the table of docs/design.md §5, the rows without an agent status."""

_STS_OUTCOMES = frozenset(str(o) for o in StsOutcome)

_ANSWERED = frozenset({str(Status.SUCCESS), str(Status.INVALID_CREDENTIALS)})
_DISGUISED = frozenset({str(StsOutcome.USER_NOT_FOUND), str(StsOutcome.REPEATED_PASSWORD)})
"""Answers timed like an agent's (`RoundTrips`), so that time tells nothing more."""

_SETTLEMENTS: dict[str, Settlement] = {
    Status.INVALID_CREDENTIALS: Settlement.FAILURE,
    Status.SUCCESS: Settlement.SUCCESS,
    # No genuine answer before the deadline, though the agent may be binding: the place
    # stays in flight until it expires, and a late genuine reply is settled when it comes
    # (`settle_late`). The agent's own directory_timeout is an answer: neutral.
    StsOutcome.TIMEOUT: Settlement.UNANSWERED,
    StsOutcome.FORGED_REPLY: Settlement.UNANSWERED,
}
"""How each result counts toward smart lockout; anything else is neutral."""

_DISPATCH_OUTCOMES = {
    DispatchOutcome.NO_AGENT: StsOutcome.NO_AGENT,
    DispatchOutcome.TIMEOUT: StsOutcome.TIMEOUT,
    DispatchOutcome.FORGED: StsOutcome.FORGED_REPLY,
}


def error_for(result: str) -> type[OAuthError] | None:
    """The error answered for a sign-in `result` (agent status or StsOutcome); None = success.

    Raises ValueError for a result that is neither (a bug).
    """
    if result == SUCCESS:
        return None
    if result in _STS_OUTCOMES:
        return STS_OUTCOME_ERRORS[StsOutcome(result)]
    return AGENT_STATUS_ERRORS[Status(result)]


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to, before it is logged and answered."""

    result: str
    user: SignInUserRow | None = None
    agent_id: str | None = None
    detail: str = ""
    request_id: str | None = None


class RoundTrips:
    """Recent durations of sign-ins the agents answered, per tenant (issue 8 finding 7).

    An unknown user (or a recent wrong password, answered from memory) is answered after
    a delay drawn from these, so a client measuring times cannot tell those answers from
    an agent's. Bounded: `per_tenant` durations for each of at most `tenants` tenants (the
    least recently answered tenant is forgotten first). Pure memory, no I/O.
    """

    def __init__(self, *, per_tenant: int = 64, tenants: int = 10_000) -> None:
        self._per_tenant = per_tenant
        # First in, first out; `add` re-inserts its tenant, so the least recently answered
        # tenant is the first out (reading a sample does not move it).
        self._by_tenant: FIFOCache[str, deque[float]] = FIFOCache(tenants)
        self._all: deque[float] = deque(maxlen=per_tenant)

    def add(self, tenant_id: str, seconds: float) -> None:
        durations = self._by_tenant.pop(tenant_id, None) or deque(maxlen=self._per_tenant)
        durations.append(seconds)
        self._by_tenant[tenant_id] = durations
        self._all.append(seconds)

    def sample(self, tenant_id: str) -> float | None:
        """One recent duration of this tenant, else of any tenant; None before any."""
        durations = self._by_tenant.get(tenant_id) or self._all
        return secrets.choice(durations) if durations else None


MAX_DISGUISED = 1000  # answers held back at once; beyond, answered at once (never queued)


class AgentPasswordValidator:
    """Validates synced users' passwords through the tenant's agents (module docstring)."""

    def __init__(
        self,
        *,
        db: Database,
        agent_keys: AgentKeys,
        dispatcher: AgentDispatcher | None,
        lockout: LockoutStore,
        sign_in_log: SignInLog,
        request_timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._agent_keys = agent_keys
        self._dispatcher = dispatcher
        self._lockout = lockout
        self._sign_in_log = sign_in_log
        self._request_timeout_s = request_timeout_s
        self._clock = clock
        self.round_trips = RoundTrips()
        self._disguised = 0
        self._late_tasks: set[asyncio.Task[None]] = set()

    async def validate(
        self, tenant: Tenant, username: str, password: str, context: SignInContext
    ) -> SignedInUser:
        """The signed-in user, or raises the OAuthError of the table of docs/design.md §5."""
        started = time.perf_counter()
        try:
            attempt = await self._attempt(tenant, username, password, context)
        except OAuthError as exc:  # DatabaseUnavailable and the like: logged, re-raised
            self._record(
                tenant, username, context, Attempt(ERROR, detail=exc.error), started, exc.code
            )
            raise
        if attempt.agent_id is not None and attempt.result in _ANSWERED:
            self.round_trips.add(tenant.id, time.perf_counter() - started)
        elif attempt.result in _DISGUISED:
            await self._disguise(tenant, started)
        error = error_for(attempt.result)
        self._record(tenant, username, context, attempt, started, error.code if error else 0)
        if error is not None:
            raise error()
        assert attempt.user is not None and attempt.agent_id is not None  # success has both
        user = attempt.user
        return SignedInUser(
            id=str(user.id),
            tenant_id=tenant.id,
            username=user.username,
            display_name=user.display_name,
            immutable_id=user.immutable_id,
            agent_id=attempt.agent_id,
        )

    async def _disguise(self, tenant: Tenant, started: float) -> None:
        """Wait until the answer takes as long as one the agents gave (`RoundTrips`).

        Holds nothing but this coroutine (no database connection, no agent); at most the
        request timeout, and at most `MAX_DISGUISED` at once, so it cannot be turned into a
        resource sink or an amplifier: a flood gets its answers at once instead.
        """
        target = self.round_trips.sample(tenant.id)
        if target is None or self._disguised >= MAX_DISGUISED:
            return
        delay = min(target, self._request_timeout_s) - (time.perf_counter() - started)
        if delay <= 0:
            return
        self._disguised += 1
        try:
            await asyncio.sleep(delay)
        finally:
            self._disguised -= 1

    async def _attempt(
        self, tenant: Tenant, username: str, password: str, context: SignInContext
    ) -> Attempt:
        """Steps 1 to 6 of the module docstring."""
        name = canonical_username(username)
        user = None if name is None else await self._db.sign_in_user(tenant.uuid, name)
        if user is None:
            return Attempt(StsOutcome.USER_NOT_FOUND)
        state = state_from_row(user.lockout)
        now = self._clock()
        policy = self._lockout.policy
        if policy.is_locked(state, now):
            locked_s = round(policy.locked_for(state, now))
            return Attempt(StsOutcome.SMART_LOCKOUT, user, detail=f"locked for {locked_s} s")
        if not password:
            return Attempt(StsOutcome.EMPTY_PASSWORD, user)
        key = user_key(user.username)
        if policy.is_repeat(state, self._lockout.fingerprint(tenant.id, key, password), now):
            return Attempt(StsOutcome.REPEATED_PASSWORD, user, detail="a recent wrong password")
        deadline = now + self._request_timeout_s
        # A place in flight for this user (all replicas count together): parallel guesses
        # wait for earlier answers instead of all reaching the directory at once.
        verdict, seen = await self._lockout.enter(tenant.id, key, deadline, self._clock)
        if verdict is not Admission.ADMITTED:
            locked_s = round(policy.locked_for(seen, self._clock()))
            return Attempt(StsOutcome.SMART_LOCKOUT, user, detail=f"locked for {locked_s} s")
        attempt: Attempt | None = None
        try:
            attempt = await self._dispatch_admitted(tenant, user, password, context, deadline)
            return attempt
        finally:
            await self._bookkeep(tenant, user, password, attempt)

    async def _dispatch_admitted(
        self,
        tenant: Tenant,
        user: SignInUserRow,
        password: str,
        context: SignInContext,
        deadline: float,
    ) -> Attempt:
        """Seal and dispatch one admitted attempt (module docstring, steps 4 to 6)."""
        now = self._clock()
        agents = await self._agent_keys.for_tenant(tenant.id)
        if not agents:
            return Attempt(StsOutcome.NO_AGENT, user, detail="the tenant has no active agent")
        if self._dispatcher is None:
            return Attempt(StsOutcome.NO_AGENT, user, detail="no broker is configured")
        request_id = str(uuid.uuid4())
        reply_key = new_reply_key()
        try:
            envelope = seal(
                password=password,
                reply_key=reply_key,
                recipients=[(a.kid, a.public_key) for a in agents],
                request_id=request_id,
                tenant_id=tenant.id,
                username=user.username,
                issued_at=now,
                expires_at=max(deadline, now + 0.5),
            )
        except ValueError as exc:  # the message never holds the password (envelope.seal)
            return Attempt(StsOutcome.PASSWORD_REFUSED, user, detail=str(exc))
        result = await self._dispatcher.dispatch(
            DispatchRequest(
                envelope=envelope,
                reply_key=reply_key,
                recipients=recipients_of(agents),
                correlation_id=context.correlation_id,
            )
        )
        if result.outcome is not DispatchOutcome.REPLIED or result.reply is None:
            outcome = _DISPATCH_OUTCOMES.get(result.outcome, StsOutcome.TIMEOUT)
            return Attempt(outcome, user, detail=result.detail, request_id=request_id)
        reply = result.reply
        return Attempt(
            str(reply.status),
            user,
            agent_id=reply.agent_id,
            detail=reply.detail,
            request_id=request_id,
        )

    async def _bookkeep(
        self, tenant: Tenant, user: SignInUserRow, password: str, attempt: Attempt | None
    ) -> None:
        """Release the attempt's place in flight and count its outcome.

        A wrong password counts toward smart lockout, a success clears the count, anything
        else neither. A database failure here is logged, not fatal; the place in flight
        then expires on its own (`in_flight_until`).
        """
        result = attempt.result if attempt is not None else ""
        settlement = _SETTLEMENTS.get(result, Settlement.NEUTRAL)
        key = user_key(user.username)
        fingerprint = (
            self._lockout.fingerprint(tenant.id, key, password)
            if settlement is Settlement.FAILURE
            else None
        )
        try:
            new = await self._lockout.settle(tenant.id, key, self._clock(), settlement, fingerprint)
        except DatabaseUnavailable:
            log.error("lockout_update_failed", username=user.username, outcome=result)
            return
        if settlement is Settlement.FAILURE and self._lockout.policy.is_locked(new, self._clock()):
            log.warning(
                "smart_lockout_started",
                username=user.username,
                lockouts=new.lockouts,
                locked_for_s=round(self._lockout.policy.locked_for(new, self._clock())),
            )

    def settle_late(self, late: LateReply) -> None:
        """`Dispatcher.on_late_reply`: count a genuine reply that came after the deadline.

        The user was answered 80002, but the directory saw the bind: a wrong password
        counts now, and the place the attempt kept is released if it has not expired.
        """
        task = asyncio.get_running_loop().create_task(self._settle_late(late))
        self._late_tasks.add(task)
        task.add_done_callback(self._late_tasks.discard)

    @property
    def late_tasks(self) -> tuple[asyncio.Task[None], ...]:
        """Late-reply settlements still running (cancelled at shutdown)."""
        return tuple(self._late_tasks)

    async def _settle_late(self, late: LateReply) -> None:
        settlement = _SETTLEMENTS.get(str(late.status), Settlement.NEUTRAL)
        now = self._clock()
        is_held = now <= late.expires_at + IN_FLIGHT_MARGIN_S
        try:
            new = await self._lockout.settle(
                late.tenant_id, user_key(late.username), now, settlement, release=is_held
            )
        except DatabaseUnavailable:
            log.error("lockout_update_failed", username=late.username, outcome="late_reply")
            return
        log.info(
            "late_reply_settled",
            username=late.username,
            status=str(late.status),
            failures=new.failures,
            is_locked=self._lockout.policy.is_locked(new, now),
        )

    def _record(
        self,
        tenant: Tenant,
        username: str,
        context: SignInContext,
        attempt: Attempt,
        started: float,
        code: int | None,
    ) -> None:
        """The sign-in log row and the `sign_in` summary line."""
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        # The name as typed only when it is shaped like one: a password typed into the
        # username field must reach neither the log nor the sign-in log (common.logs).
        typed = username.lower() if is_user_name(username) else ""
        name = attempt.user.username if attempt.user is not None else typed
        result = str(attempt.result)
        log.info(
            "sign_in",
            outcome=result,
            code=code or 0,
            agent_id=attempt.agent_id,
            latency_ms=latency_ms,
            username=name,
            flow=context.flow,
            client_id=context.client_id,
            request_id=attempt.request_id,
            detail=attempt.detail,
        )
        self._sign_in_log.add(
            SignInRecord(
                at=dt.datetime.now(dt.UTC),
                tenant_id=tenant.uuid,
                username=name,
                user_id=attempt.user.id if attempt.user is not None else None,
                result=result,
                code=code or 0,
                detail=attempt.detail[:200],
                agent_id=uuid.UUID(attempt.agent_id) if attempt.agent_id else None,
                latency_ms=latency_ms,
                client_ip=context.client_ip[:64],
                correlation_id=context.correlation_id[:64],
                request_id=uuid.UUID(attempt.request_id) if attempt.request_id else None,
                client_id=context.client_id[:128],
                flow=context.flow[:32],
            )
        )


# --------------------------------------------------------------------------- app lifetime


async def sign_in_resources(app: web.Application) -> AsyncIterator[None]:
    """`cleanup_ctx`: the validator and what it runs on (after the database's context).

    Starts the LISTEN task (agent keys), the sign-in log writer and, when
    `PTA_STS_AMQP_URL` is set, the dispatcher (it opens each tenant's broker link on that
    tenant's first sign-in, retrying with backoff: the STS serves cloud-only admins while
    the broker is down). Waits briefly for the LISTEN connection so the first sign-ins do
    not answer 80001; never fails the start for it. At shutdown: stop the tasks, fail
    pending requests, close the broker links, and write the sign-in log rows still queued.
    """
    settings = app[SETTINGS]
    db = app[DATABASE]
    agent_keys = AgentKeys(db, dsn=settings.postgres_dsn, connect_timeout_s=settings.db_timeout_s)
    sign_in_log = SignInLog(
        db,
        batch=settings.signin_log_batch,
        flush_interval_s=settings.signin_log_flush_interval_s,
        queue_size=settings.signin_log_queue_size,
    )
    secret = settings.lockout_secret
    lockout = LockoutStore(
        db,
        settings.lockout_policy(),
        key=None if secret is None else secret.get_secret_value().encode(),
    )
    if settings.directory_lockout_threshold is None:
        log.warning(
            "directory_lockout_unchecked",
            detail="PTA_STS_DIRECTORY_LOCKOUT_* unset: smart lockout is not checked against "
            "the directory's",
        )
    dispatcher = None
    if settings.amqp_url is not None:
        dispatcher = Dispatcher(
            amqp_url=settings.amqp_url,
            instance_id=settings.instance_id,
            agents=agent_keys,
            consumer_check_interval_s=settings.consumer_check_interval_s,
        )
        app[DISPATCHER] = dispatcher
    else:
        log.warning("sts_without_broker", detail="PTA_STS_AMQP_URL unset: synced users get 80001")
    app[AGENT_KEYS] = agent_keys
    app[SIGN_IN_LOG] = sign_in_log
    app[LOCKOUT] = lockout
    app[ADMINS].attach_lockout(lockout)
    validator = AgentPasswordValidator(
        db=db,
        agent_keys=agent_keys,
        dispatcher=dispatcher,
        lockout=lockout,
        sign_in_log=sign_in_log,
        request_timeout_s=settings.request_timeout_s,
    )
    app[PASSWORD_VALIDATOR] = validator
    if dispatcher is not None:
        dispatcher.on_late_reply = validator.settle_late
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(agent_keys.listen(), name="sts-agent-keys-listen"),
        loop.create_task(sign_in_log.run(), name="sts-sign-in-log"),
    ]
    if dispatcher is not None:
        tasks.append(loop.create_task(dispatcher.run(), name="sts-dispatcher"))
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_START_WAIT_S):
                await agent_keys.listening.wait()
                if dispatcher is not None:
                    await dispatcher.ready.wait()
        yield
    finally:
        # Late settlements still running are cancelled before the pool closes under them
        # (the places they would release expire by themselves).
        for task in [*tasks, *validator.late_tasks]:
            task.cancel()
        await asyncio.gather(*tasks, *validator.late_tasks, return_exceptions=True)
        if dispatcher is not None:
            await dispatcher.close()
        await sign_in_log.close(timeout_s=settings.db_timeout_s)
