"""The agent's link to the broker: one robust AMQP connection to its tenant's queue.

What: ``open_link`` connects with the credentials of a bootstrap answer
(``cloud.BrokerGrant``, docs/design.md §3.2), opens one channel with the prefetch that
bounds sign-in concurrency, and checks that the tenant queue and the reply exchange exist
with passive declares (``get_queue``/``get_exchange`` with ``ensure=True``): agents may
not configure anything (permission ``^$``), so both are the cloud's to declare.
``BrokerLink.close`` closes channel and connection within a timeout.

Transport: ``amqps://`` is verified with the CA bundle pinned at registration (the
caller's ``ssl_context``). A plain ``amqp://`` URL is refused (``PlaintextBrokerRefused``,
fatal) unless its host is a loopback address or the operator set
``PTA_AGENT_ALLOW_PLAINTEXT_AMQP``: the CA's answer alone must not make the agent send its
access key and the sealed requests' metadata across a network in the clear.

The connection is ``aio_pika.connect_robust``: after a broker restart or a network cut it
reconnects by itself and restores the channel; the runner replaces the whole link when it
bootstraps again for a new access key. Reconnects and losses are logged from here.

The runner consumes ``link.queue`` with an ``agent.consumer.SignInHandler`` (manual ack)
and the handler publishes replies to ``link.exchange``. The broker URL carries the
access key; it is never logged (aio-pika censors it too).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from yarl import URL

from agent.cloud import BrokerGrant
from agent.errors import AgentError

log = structlog.get_logger(__name__)


class MessageHandler(Protocol):
    """Handles one sign-in request from the tenant queue (``agent.consumer.SignInHandler``).

    It settles the message itself (``async with message.process(...)``: ack after the
    reply is published, reject without requeue when it cannot be handled, docs/design.md
    §3.3: a request is handled at most once).
    """

    async def __call__(self, message: AbstractIncomingMessage) -> None: ...


class BrokerError(AgentError):
    """The message broker could not be used."""


class BrokerUnreachable(BrokerError):
    """The message broker could not be reached: check that this host may open outbound
    connections to the broker address the CA gave (the agent keeps trying)."""


class BrokerCertificateRevoked(BrokerError):
    """The broker's TLS certificate is REVOKED (listed on the service CRL): nothing was
    sent. Its operator must replace it; if this is unexpected, someone may be
    impersonating the broker."""


_CERT_REVOKED = 23  # OpenSSL X509_V_ERR_CERT_REVOKED


class BrokerCredentialsRefused(BrokerError):
    """The broker refused the credentials from bootstrap: the agent bootstraps again; if
    this lasts, tell the operator of the cloud service."""


class QueueUnavailable(BrokerError):
    """The tenant's queue or the reply exchange does not exist, or this agent may not use
    it: tell the operator of the cloud service (the cloud declares both and the CA grants
    access at bootstrap)."""


class PlaintextBrokerRefused(BrokerError):
    """The CA handed out a plain amqp:// broker URL for a host that is not a loopback
    address: ask the operator of the cloud service for amqps://, or, only if the network
    to the broker is trusted, set PTA_AGENT_ALLOW_PLAINTEXT_AMQP=true."""


def check_transport(grant: BrokerGrant, *, allow_plaintext: bool) -> None:
    """Refuse a broker URL that would send credentials in the clear off this host.

    ``amqps://`` passes; ``amqp://`` passes only to a loopback address (an IP literal, or
    ``localhost``: no DNS lookup decides this) or with ``allow_plaintext``. Raises
    PlaintextBrokerRefused (any other scheme is refused too).
    """
    base = URL(grant.amqp_url)
    if base.scheme == "amqps" or (allow_plaintext and base.scheme == "amqp"):
        return
    host = (base.raw_host or "").strip("[]")
    if base.scheme == "amqp" and _is_loopback(host):
        return
    raise PlaintextBrokerRefused(f"(got {_where(grant)})")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class BrokerLink:
    """A connected link: robust connection, one channel, the tenant queue, the reply
    exchange."""

    connection: AbstractRobustConnection
    channel: AbstractRobustChannel
    queue: AbstractQueue
    exchange: AbstractExchange
    grant: BrokerGrant

    @property
    def is_connected(self) -> bool:
        """True while the connection is up (False during an automatic reconnect)."""
        return not self.connection.is_closed and self.connection.connected.is_set()

    async def close(self, timeout_s: float) -> None:
        """Close channel and connection; give up after ``timeout_s`` (the broker may be
        gone, and shutdown must not hang on it)."""
        try:
            async with asyncio.timeout(timeout_s):
                if not self.channel.is_closed:
                    await self.channel.close()
                await self.connection.close()
        except TimeoutError:
            log.warning("broker_close_timed_out", timeout_s=timeout_s)
        except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
            log.info("broker_close_failed", error=type(exc).__name__)


def broker_url(grant: BrokerGrant) -> URL:
    """The AMQP URL of a grant: its host and port, its user, access key and vhost.

    The vhost is one path segment, percent-encoded (RabbitMQ URI spec: "/" is "%2F").
    """
    base = URL(grant.amqp_url)
    return URL.build(
        scheme=base.scheme,
        host=base.raw_host or "localhost",
        port=base.explicit_port,
        user=quote(grant.username, safe=""),
        password=quote(grant.access_key.get_secret_value(), safe=""),
        path="/" + quote(grant.vhost, safe=""),
        encoded=True,
    )


async def open_link(
    grant: BrokerGrant,
    *,
    ssl_context: ssl.SSLContext | None,
    prefetch: int,
    timeout_s: float,
    name: str,
    allow_plaintext: bool = False,
) -> BrokerLink:
    """Connect with ``grant``, open a channel, check the tenant queue and reply exchange.

    ``ssl_context`` is used for ``amqps://`` URLs (the pinned bundle); ``name`` labels
    the connection in the broker's management UI; ``allow_plaintext`` is the operator's
    ``PTA_AGENT_ALLOW_PLAINTEXT_AMQP``. Raises PlaintextBrokerRefused (before any
    connection), BrokerUnreachable, BrokerCredentialsRefused, QueueUnavailable.
    """
    check_transport(grant, allow_plaintext=allow_plaintext)
    url = broker_url(grant)
    secret = grant.access_key.get_secret_value()
    kwargs: dict[str, Any] = {"client_properties": {"connection_name": name}}
    if url.scheme == "amqps":
        kwargs["ssl_context"] = ssl_context
    try:
        connection = await aio_pika.connect_robust(url, timeout=timeout_s, **kwargs)
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise BrokerCredentialsRefused(f"(user {grant.username})") from exc
    except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
        if _server_revoked(exc):
            raise BrokerCertificateRevoked(f"({_where(grant)})") from exc
        raise BrokerUnreachable(f"({_where(grant)}: {_reason(exc, secret)})") from exc
    try:
        async with asyncio.timeout(timeout_s):
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.get_queue(grant.queue, ensure=True)
            exchange = await channel.get_exchange(grant.reply_exchange, ensure=True)
    except BaseException as exc:
        await _close_quietly(connection)
        if isinstance(
            exc, aiormq.exceptions.ChannelNotFoundEntity | aiormq.exceptions.ChannelAccessRefused
        ):
            names = f"queue {grant.queue}, exchange {grant.reply_exchange}"
            raise QueueUnavailable(f"({names}: {_reason(exc, secret)})") from exc
        if isinstance(exc, aiormq.exceptions.AMQPError | OSError | TimeoutError):
            raise BrokerUnreachable(f"({_where(grant)}: {_reason(exc, secret)})") from exc
        raise
    connection.reconnect_callbacks.add(_on_reconnect)
    connection.close_callbacks.add(_on_close)
    log.info("broker_connected", broker=_where(grant), queue=grant.queue, prefetch=prefetch)
    return BrokerLink(
        connection=connection, channel=channel, queue=queue, exchange=exchange, grant=grant
    )


def _server_revoked(exc: BaseException) -> bool:
    """True when the TLS handshake failed because the broker's certificate is on the
    service CRL (aiormq wraps the ssl error in AMQPConnectionError)."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return item.verify_code == _CERT_REVOKED
        pending += [item.__cause__, item.__context__, *item.args]
    return "certificate revoked" in str(exc)


def _on_reconnect(_sender: object, *_args: object) -> None:
    log.info("broker_reconnected")


def _on_close(_sender: object, exc: BaseException | None = None, *_args: object) -> None:
    # Called with the closing reason; None or a plain close when we asked for it.
    if exc is not None and not isinstance(exc, asyncio.CancelledError):
        log.warning("broker_connection_lost", error=_reason(exc))


async def _close_quietly(connection: AbstractRobustConnection) -> None:
    try:
        async with asyncio.timeout(5):
            await connection.close()
    except (aiormq.exceptions.AMQPError, OSError, TimeoutError):
        pass


def _where(grant: BrokerGrant) -> str:
    """Host and port of the broker, without credentials."""
    base = URL(grant.amqp_url)
    port = f":{base.port}" if base.port is not None else ""
    return f"{base.scheme}://{base.host}{port}"


def _reason(exc: BaseException, secret: str = "") -> str:
    """A short reason for a log or message; the access key is scrubbed should a library
    ever quote the URL."""
    text = str(exc).strip()
    if secret:
        text = text.replace(secret, "[redacted]")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
