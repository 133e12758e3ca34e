"""Each tenant's active agents and their loaded public keys, cached per STS process.

Sealing an envelope (docs/design.md §3.3, step 2) needs every active agent of the tenant:
its id, key id and RSA public key. Loading a key from DER costs far more than the RSA
wrap itself (docs/servers.md: load keys once), and a query per sign-in would be wasted: agents
change a few times a day. So the keys are cached per tenant and kept fresh by
PostgreSQL LISTEN/NOTIFY: migration 005 fires `pg_notify('pta_agents', tenant_id)` when an
agent row is inserted, deleted, or its key, tenant or certificate expiry changes
(renewal, revocation, deletion), and `listen()` drops that tenant from the cache; the next
sign-in reloads it (one query, single-flight per tenant).

An agent is active when its row exists and its certificate has not expired
(`cert_not_after > now()`): the CA deletes revoked agents, and an agent with an expired
certificate can no longer bootstrap. Heartbeat silence does not remove an agent from the
envelope: wrapping one more key costs ~20 us, while leaving out an agent that is alive
but late to report would answer its users `key_not_found`.

Freshness rules:
- `listen()` holds one dedicated connection (not from the pool), reconnects with
  exponential, jittered backoff (`common.backoff`), and invalidates everything on every
  (re)connect: notifications sent while it was away are lost.
- While it is not listening, nothing is cached: every sign-in reads the table.
- A load that raced with a notification is not stored (per-tenant generation numbers), so
  a reload that started before a change committed cannot resurrect the old keys.
- Cached agents whose certificate expires are filtered out at use time.

Rows whose SPKI is not an RSA key or whose kid does not match the SPKI are skipped with an
error log (the CA never writes such rows; a bad row must not break the tenant's sign-ins).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import asyncpg
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from common.backoff import Backoff
from common.envelope import kid_for
from sts.queries import AgentKeyRow, Database

CHANNEL = "pta_agents"
"""The NOTIFY channel of migration 005's trigger on `agents`."""
LISTEN_APPLICATION_NAME = "pta-sts-agent-keys"
"""How the LISTEN connection shows in `pg_stat_activity`."""

_BACKOFF_INITIAL_S = 0.5
_BACKOFF_MAX_S = 30.0
_PING_INTERVAL_S = 30.0  # a silently dropped TCP connection is found within this

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ActiveAgent:
    """One agent an envelope is sealed for."""

    id: str
    kid: str
    public_key: RSAPublicKey = field(repr=False, compare=False)
    not_after: float  # certificate expiry, Unix seconds


@dataclass(frozen=True, slots=True)
class _Entry:
    agents: tuple[ActiveAgent, ...]


def load_agents(rows: list[AgentKeyRow]) -> tuple[ActiveAgent, ...]:
    """Load the public keys of agent rows; rows that cannot be used are logged and skipped."""
    agents = []
    for row in rows:
        try:
            key = load_der_public_key(row.spki)
        except ValueError:
            log.error("agent_key_invalid", agent_id=str(row.id), reason="SPKI does not parse")
            continue
        if not isinstance(key, RSAPublicKey):
            log.error("agent_key_invalid", agent_id=str(row.id), reason="not an RSA key")
            continue
        if kid_for(key) != row.kid:
            log.error("agent_key_invalid", agent_id=str(row.id), reason="kid does not match")
            continue
        agents.append(ActiveAgent(str(row.id), row.kid, key, row.cert_not_after.timestamp()))
    return tuple(agents)


class AgentKeys:
    """The per-tenant cache of active agents, invalidated by NOTIFY (see module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        dsn: str,
        connect_timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._generations: dict[str, int] = {}
        self._epoch = 0  # bumped by invalidate_all
        self._loading: dict[str, asyncio.Task[tuple[ActiveAgent, ...]]] = {}
        self._is_listening = False
        self.listening = asyncio.Event()  # set while LISTEN is active (tests await it)
        self.stats: dict[str, int] = {"loads": 0, "notifications": 0, "reconnects": 0}

    @property
    def is_listening(self) -> bool:
        return self._is_listening

    # -- reading -------------------------------------------------------------------------

    async def for_tenant(self, tenant_id: str) -> tuple[ActiveAgent, ...]:
        """The tenant's active agents (possibly none). Raises DatabaseUnavailable."""
        entry = self._cache.get(tenant_id)
        if entry is None:
            agents = await self._load_once(tenant_id)
        else:
            agents = entry.agents
        now = self._clock()
        if any(a.not_after <= now for a in agents):
            agents = tuple(a for a in agents if a.not_after > now)
        return agents

    async def reload(self, tenant_id: str) -> tuple[ActiveAgent, ...]:
        """Drop the tenant's entry and read it again (e.g. a reply from an unknown agent)."""
        self.invalidate(tenant_id)
        return await self.for_tenant(tenant_id)

    async def _load_once(self, tenant_id: str) -> tuple[ActiveAgent, ...]:
        """One query per tenant at a time; concurrent callers share its result.

        The load runs as its own short task (bounded by the database timeout), so a
        caller that is cancelled (client gone) does not fail the others waiting on it.
        """
        task = self._loading.get(tenant_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(tenant_id))
            self._loading[tenant_id] = task
            task.add_done_callback(lambda _t: self._loading.pop(tenant_id, None))
        return await asyncio.shield(task)

    async def _load(self, tenant_id: str) -> tuple[ActiveAgent, ...]:
        generation = (self._epoch, self._generations.get(tenant_id, 0))
        rows = await self._db.active_agents(uuid.UUID(tenant_id))
        agents = load_agents(rows)
        self.stats["loads"] += 1
        is_unchanged = generation == (self._epoch, self._generations.get(tenant_id, 0))
        if self._is_listening and is_unchanged:
            self._cache[tenant_id] = _Entry(agents)
        return agents

    # -- invalidation --------------------------------------------------------------------

    def invalidate(self, tenant_id: str) -> None:
        """Forget one tenant; a load in flight for it will not be stored."""
        self._cache.pop(tenant_id, None)
        self._generations[tenant_id] = self._generations.get(tenant_id, 0) + 1

    def invalidate_all(self) -> None:
        self._cache.clear()
        self._generations.clear()
        self._epoch += 1

    def generation(self, tenant_id: str) -> tuple[int, int]:
        """Changes whenever the tenant is invalidated (for tests and metrics)."""
        return self._epoch, self._generations.get(tenant_id, 0)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.stats["notifications"] += 1
        tenant_id = str(payload)
        if tenant_id:
            self.invalidate(tenant_id)
        else:  # TRUNCATE
            self.invalidate_all()

    # -- the LISTEN connection -----------------------------------------------------------

    async def listen(self) -> None:
        """Run until cancelled: LISTEN on `pta_agents`, reconnecting with backoff."""
        backoff = Backoff(_BACKOFF_INITIAL_S, _BACKOFF_MAX_S)
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._connect_timeout_s,
                    server_settings={"application_name": LISTEN_APPLICATION_NAME},
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self.invalidate_all()  # whatever changed while we were away
                self._is_listening = True
                self.listening.set()
                log.info("agent_keys_listening", channel=CHANNEL)
                backoff.reset()
                await self._watch(conn, lost)
                delay = backoff.next()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the top of a task: log, back off, reconnect
                delay = backoff.next()
                log.warning(
                    "agent_keys_listen_failed",
                    error=f"{type(exc).__name__}: {exc}"[:200],
                    retry_in_s=round(delay, 3),
                )
            finally:
                was_listening = self._is_listening
                self._is_listening = False
                self.listening.clear()
                self.invalidate_all()
                if conn is not None:
                    conn.terminate()
            if was_listening:
                self.stats["reconnects"] += 1
            await asyncio.sleep(delay)

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when the connection is lost; ping it so a dead peer is noticed."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PING_INTERVAL_S):
                    await lost.wait()
                    return
            async with asyncio.timeout(self._connect_timeout_s):
                await conn.fetchval("SELECT 1")


def recipients_of(agents: tuple[ActiveAgent, ...]) -> Mapping[str, str]:
    """Agent id -> kid, what the dispatcher checks replies against."""
    return {a.id: a.kid for a in agents}


AGENT_KEYS = web.AppKey("agent_keys", AgentKeys)
