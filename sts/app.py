"""The STS application: routes, middlewares and the resources that live as long as it.

`create_app(settings)` loads the signing keys at once (a bad key folder fails here, at
start), and registers `cleanup_ctx`s that open the database pool, the password hashing
thread pool and the sign-in path (`sts.passwords.sign_in_resources`: broker connection,
agent key LISTEN connection, sign-in log writer) at startup and close them at shutdown
(docs/contributing.md §6). Every resource sits under a typed `web.AppKey` in the module of
its concept.

Middlewares, outermost first: correlation (ids, log context, response headers), then
errors (OAuth errors, aiohttp's HTTP errors and faults rendered in Entra's shape). Bodies
are bounded by `CLIENT_MAX_SIZE` (413 beyond it). Every answer over TLS carries
Strict-Transport-Security (`common.tls.strict_transport_security`, errors included).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import structlog
from aiohttp import web

from common.tls import strict_transport_security
from sts import authorize, devicecode, devicelogin, discovery, token, userrealm
from sts.admins import ADMINS, AdminVerifier
from sts.correlation import correlation_middleware
from sts.devicecode import DEVICE_FLOW, DeviceFlow
from sts.errors import error_middleware
from sts.issuance import ISSUER, TokenIssuer
from sts.passwords import sign_in_resources
from sts.queries import DATABASE, Database
from sts.settings import SETTINGS, StsSettings
from sts.signing import SigningKeys
from sts.tenants import TENANTS, TenantDirectory

CLIENT_MAX_SIZE = 64 * 1024
"""The largest request body: a token request is well under 4 KiB."""


def create_app(
    settings: StsSettings, *, signing_keys: SigningKeys | None = None
) -> web.Application:
    """Build the STS application. Raises SigningKeyError when the keys cannot be used."""
    keys = signing_keys if signing_keys is not None else SigningKeys.load(settings.signing_key_dir)
    app = web.Application(
        middlewares=[correlation_middleware, error_middleware],
        client_max_size=CLIENT_MAX_SIZE,
    )
    app.on_response_prepare.append(strict_transport_security)
    app[SETTINGS] = settings
    app[ISSUER] = TokenIssuer(keys, settings.public_url, settings.access_token_lifetime_s)
    app.cleanup_ctx.append(_password_hashing)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(sign_in_resources)  # after the pool: it uses it
    discovery.add_routes(app)
    token.add_routes(app)
    devicecode.add_routes(app)
    devicelogin.add_routes(app)
    authorize.add_routes(app)
    userrealm.add_routes(app)
    return app


_EXECUTOR = web.AppKey("password_hash_executor", ThreadPoolExecutor)


async def _password_hashing(app: web.Application) -> AsyncIterator[None]:
    """The bounded thread pool for argon2id (CPU- and memory-heavy, off the event loop)."""
    settings = app[SETTINGS]
    executor = ThreadPoolExecutor(
        max_workers=settings.password_hash_workers, thread_name_prefix="sts-argon2"
    )
    app[_EXECUTOR] = executor
    try:
        yield
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


async def _database(app: web.Application) -> AsyncIterator[None]:
    """The asyncpg pool and everything built on it."""
    settings = app[SETTINGS]
    async with asyncio.timeout(settings.db_timeout_s * 2):
        pool = await asyncpg.create_pool(
            settings.postgres_dsn,
            min_size=1,
            max_size=settings.db_pool_size,
            timeout=settings.db_timeout_s,
            command_timeout=settings.db_timeout_s,
        )
    try:
        db = Database(pool, timeout_s=settings.db_timeout_s)
        admins = await AdminVerifier.create(db, app[_EXECUTOR])
        app[DATABASE] = db
        app[TENANTS] = TenantDirectory(db, ttl_s=settings.tenant_cache_ttl_s)
        app[ADMINS] = admins
        app[DEVICE_FLOW] = DeviceFlow(
            db=db,
            admins=admins,
            public_url=settings.public_url,
            lifetime_s=settings.device_code_lifetime_s,
            interval_s=settings.device_poll_interval_s,
        )
        structlog.get_logger(__name__).info(
            "sts_started", public_url=settings.public_url, kid=app[ISSUER].keys.current_kid
        )
        yield
    finally:
        try:
            async with asyncio.timeout(settings.db_timeout_s):
                await pool.close()
        except TimeoutError:
            pool.terminate()
