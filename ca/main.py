"""``pta-ca``: run the CA until SIGTERM or SIGINT.

Reads ``Settings`` from the environment (``PTA_CA_*``), configures logging, and serves two
listeners on uvloop: the HTTPS API on ``host:port`` (server certificate from the service
TLS CA; client certificates from the PTA CA asked for but optional, so bearer and mutual
TLS endpoints share the port) and the CRLs over plain HTTP on ``host:crl_port``. A bad
setting or file stops it at start with a message naming the setting (exit status 2).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
import uvloop
from aiohttp import web
from pydantic import ValidationError

from ca.app import create_app, create_crl_app
from ca.errors import ConfigurationError
from ca.settings import Settings
from common import logs
from common.tls import TlsConfigError, server_context

log = structlog.get_logger("ca")


async def serve(settings: Settings, *, stop: asyncio.Event) -> None:
    """Serve both listeners until ``stop`` is set, then shut them down.

    Raises ConfigurationError or TlsConfigError when a file is unusable, OSError when a
    port cannot be bound.
    """
    tls = server_context(
        settings.tls_cert_file,
        settings.tls_key_file,
        client_ca_file=settings.pta_ca_cert_file,
        require_client_cert=False,
    )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    crl_runner = web.AppRunner(create_crl_app(app), access_log=None)
    await runner.setup()
    try:
        await crl_runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.port, ssl_context=tls).start()
            await web.TCPSite(crl_runner, settings.host, settings.crl_port).start()
            log.info(
                "ca_started",
                url=f"https://{settings.host}:{settings.port}",
                public_url=settings.public_url,
                crl_url=f"http://{settings.host}:{settings.crl_port}",
            )
            await stop.wait()
            log.info("ca_stopping")
        finally:
            await crl_runner.cleanup()
    finally:
        await runner.cleanup()


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop=stop)


def main() -> None:
    """Console script ``pta-ca``."""
    try:
        settings = Settings()  # type: ignore[call-arg]  # fields come from PTA_CA_* env
    except ValidationError as exc:
        print(f"pta-ca: invalid settings (environment PTA_CA_*):\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.configure(level=settings.log_level, service="ca")
    try:
        uvloop.run(_run(settings))
    except (ConfigurationError, TlsConfigError, OSError) as exc:
        log.error("ca_start_failed", reason=str(exc))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
