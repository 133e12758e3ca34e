"""`pta-sts`: run the security token service.

Settings come from `PTA_STS_*` environment variables (`sts.settings`); a bad one stops the
start with a message naming it (exit status 2), as do unusable signing keys or TLS files.
Serves HTTPS with `common.tls.server_context` when `PTA_STS_TLS_CERT_FILE` and
`PTA_STS_TLS_KEY_FILE` are set, plain HTTP otherwise (tests only: a warning says so).
SIGTERM and SIGINT stop it gracefully: aiohttp stops accepting, lets in-flight requests
finish (up to `SHUTDOWN_TIMEOUT_S`), then the cleanup contexts close the pools.

It listens on `PTA_STS_HOST:PTA_STS_PORT` and on every `PTA_STS_EXTRA_LISTEN` address
(same app, same TLS context: one aiohttp `AppRunner`, one `TCPSite` per address). MSAL
asks home-realm discovery at `https://{host}/common/userrealm/...` without the port, so
a deployment on another port adds `127.0.0.1:443` there. An address that cannot be bound
(in use, or port < 1024 without the privilege) stops the start with exit status 2.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from collections.abc import Callable

import structlog
from aiohttp import web
from pydantic import ValidationError

from common import logs
from common.tls import TlsConfigError, server_context
from sts.app import create_app
from sts.settings import StsSettings, settings_error_message
from sts.signing import SigningKeyError

SHUTDOWN_TIMEOUT_S = 10.0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where available (docs/servers.md: ~30% less CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # not on Windows; the service still runs
        return asyncio.new_event_loop
    return uvloop.new_event_loop


class CannotListen(Exception):
    """An address cannot be bound: in use, or a port below 1024 without the privilege
    (run as root or grant CAP_NET_BIND_SERVICE), or not an address of this host."""


def listen_addresses(settings: StsSettings) -> list[tuple[str, int]]:
    """The main address first, then the extra ones, each once."""
    return list(dict.fromkeys([(settings.host, settings.port), *settings.extra_listen]))


async def serve(
    app: web.Application,
    addresses: list[tuple[str, int]],
    ssl_context: ssl.SSLContext | None,
    *,
    stop: asyncio.Event,
    started: asyncio.Event | None = None,
) -> None:
    """Serve `app` on every address until `stop` is set, then shut down gracefully.

    Raises CannotListen when an address cannot be bound (the app is cleaned up first).
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        for host, port in addresses:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            try:
                await site.start()
            except OSError as exc:
                raise CannotListen(f"{host}:{port}: {exc.strerror or exc}") from exc
        structlog.get_logger(__name__).info(
            "sts_listening",
            addresses=[f"{host}:{port}" for host, port in addresses],
            tls=ssl_context is not None,
        )
        if started is not None:
            started.set()
        await stop.wait()
    finally:
        await runner.cleanup()


async def _run(
    app: web.Application, addresses: list[tuple[str, int]], ssl_context: ssl.SSLContext | None
) -> None:
    """`serve` with SIGTERM and SIGINT turned into `stop` (docs/contributing.md §6)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, addresses, ssl_context, stop=stop)


def main() -> None:
    """Console script entry point."""
    try:
        settings = StsSettings()  # type: ignore[call-arg]  # read from PTA_STS_* variables
    except ValidationError as exc:
        print(settings_error_message(exc), file=sys.stderr)
        raise SystemExit(2) from None
    logs.configure(level=settings.log_level, service="sts")
    log = structlog.get_logger(__name__)
    try:
        app = create_app(settings)
        ssl_context = (
            server_context(settings.tls_cert_file, settings.tls_key_file)
            if settings.tls_cert_file is not None and settings.tls_key_file is not None
            else None
        )
    except (SigningKeyError, TlsConfigError) as exc:
        log.error("sts_start_failed", reason=str(exc))
        raise SystemExit(2) from None
    if ssl_context is None:
        log.warning("sts_plain_http", detail="no TLS certificate configured; for tests only")
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_run(app, listen_addresses(settings), ssl_context))
    except CannotListen as exc:
        log.error("sts_start_failed", reason=str(exc))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
