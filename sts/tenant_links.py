"""The STS's connections to the tenants' vhosts on the broker, one `TenantLink` each.

Part of the dispatcher (`sts.dispatcher`). Each tenant has its own vhost (`pta.<tenant
id>`, `common.contracts.tenant_vhost`), and an AMQP connection reaches one vhost, so the
STS keeps one link per tenant, opened on the first sign-in that needs it (one open at a
time per tenant; a failed open answers AADSTS80001 and is retried with jittered backoff,
`common.backoff`, by later sign-ins). Per link:
- one robust connection as the STS's own broker user (never the administrator: see
  `ca.broker_admin.sts_permissions`) and one channel, with publisher confirms and
  `on_return_raises`, so an unroutable publish (no tenant queue) fails at once
  (AADSTS80001) and a publish the queue refuses (full, `x-overflow: reject-publish`)
  fails at once too;
- one exclusive, auto-delete reply queue named `sts.<instance id>.<random>` (the same
  name in every vhost), bound to that vhost's `pta.replies` exchange (passive-declared:
  the CA declares it) with that name as routing key: it is every request's `reply_to`;
- when the channel or connection closes, `on_close(tenant_id)` is called (the dispatcher
  fails every pending request of that tenant at once: the user is answered at once, not
  at the deadline);
- a plain (not robust) probe channel for passive declares of the tenant queue, whose
  consumer count `probe` returns (`sts.consumer_counts`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import aio_pika
import aiormq
import aiormq.abc
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from common.backoff import backoff_delay
from common.contracts import REPLY_EXCHANGE, tenant_queue, tenant_vhost, vhost_url

_BACKOFF_INITIAL_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0
_RECONNECT_INTERVAL_S: Final = 1.0  # robust reconnects: sign-ins answer 80001 meanwhile

log = structlog.get_logger("sts.dispatcher")


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


class TenantLinks:
    """The open links by tenant id, the opens under way and the backoff of failed ones."""

    def __init__(
        self,
        *,
        amqp_url: str,
        reply_key: str,
        on_reply: Callable[[AbstractIncomingMessage], Awaitable[None]],
        on_close: Callable[[str, BaseException | None], None],
        connect_timeout_s: float,
    ) -> None:
        self._amqp_url = amqp_url
        self._reply_key = reply_key
        self._on_reply = on_reply
        self._on_close = on_close
        self._connect_timeout_s = connect_timeout_s
        self._links: dict[str, TenantLink] = {}
        self._opening: dict[str, asyncio.Task[TenantLink | None]] = {}
        # tenant -> (not before, failed attempts in a row)
        self._retry: dict[str, tuple[float, int]] = {}

    @property
    def open(self) -> Mapping[str, TenantLink]:
        """The open tenant links, by tenant id."""
        return self._links

    async def link(self, tenant_id: str, *, timeout_s: float) -> TenantLink | None:
        """The tenant's link, opened on first use; None when it cannot be had in
        `timeout_s` or failed recently (retried with backoff, in the background of
        later sign-ins: one open at a time per tenant)."""
        found = self._links.get(tenant_id)
        if found is not None:
            return found
        task = self._opening.get(tenant_id)
        if task is None:
            not_before, _ = self._retry.get(tenant_id, (0.0, 0))
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
            _, attempt = self._retry.get(tenant_id, (0.0, 0))
            backoff = backoff_delay(attempt, first_s=_BACKOFF_INITIAL_S, max_s=_BACKOFF_MAX_S)
            self._retry[tenant_id] = (time.monotonic() + backoff, attempt + 1)
            log.warning(
                "broker_connect_failed",
                tenant_id=tenant_id,
                error=f"{type(exc).__name__}: {exc}"[:200],
                retry_in_s=round(backoff, 3),
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
                client_properties={"connection_name": self._reply_key},
                reconnect_interval=_RECONNECT_INTERVAL_S,
            )
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                # Passive: the CA declares the exchange; the STS may not configure it.
                exchange = await channel.get_exchange(REPLY_EXCHANGE, ensure=True)
                queue = await channel.declare_queue(
                    self._reply_key, exclusive=True, auto_delete=True
                )
                await queue.bind(exchange, routing_key=self._reply_key)
                await queue.consume(self._on_reply, no_ack=True, exclusive=True)
        except BaseException:
            await connection.close()
            raise
        assert isinstance(channel, AbstractRobustChannel)  # connect_robust's channels are
        on_close = functools.partial(self._closed, tenant_id)
        channel.close_callbacks.add(on_close)
        connection.close_callbacks.add(on_close)
        log.info(
            "broker_connected",
            tenant_id=tenant_id,
            reply_queue=self._reply_key,
            open_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return TenantLink(tenant_id, connection, channel)

    def _closed(self, tenant_id: str, _sender: object, exc: BaseException | None = None) -> None:
        self._on_close(tenant_id, exc)

    async def cancel_opens(self) -> None:
        """Cancel the opens under way (at shutdown)."""
        opening = list(self._opening.values())
        for task in opening:
            task.cancel()
        await asyncio.gather(*opening, return_exceptions=True)

    async def close(self) -> None:
        """Close every open tenant link (after the pending requests were failed)."""
        links, self._links = list(self._links.values()), {}
        for link in links:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    await link.connection.close()
            except TimeoutError:
                log.warning("broker_close_timeout", tenant_id=link.tenant_id)

    # -- consumer counts -----------------------------------------------------------------

    async def probe(self, tenant_id: str) -> int | None:
        """Passive-declare the tenant queue for its consumer count (0 when it is missing:
        the CA declares it when the tenant's first agent registers; the STS may not)."""
        link = self._links.get(tenant_id)
        if link is None:
            return None
        name = tenant_queue(tenant_id)
        async with link.probe_lock:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    channel = await self._probe_channel(link)
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

    async def _probe_channel(self, link: TenantLink) -> aiormq.abc.AbstractChannel:
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
