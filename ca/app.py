"""The CA's two aiohttp applications: the HTTPS API and the plain-HTTP CRL listener.

``create_app(settings)`` builds the API (docs/architecture.md "CA HTTP API"); the CA
certificates and keys are loaded here, so a bad file fails at start. The database pool
and the outbound HTTP session (RabbitMQ management API, STS JWKS) are ``cleanup_ctx``
resources. Tests pass ``key_source`` (a static JWKS) and may pass ``broker`` or ``clock``.

``create_crl_app(main)`` serves ``/pta.crl`` and ``/service.crl`` from the main app's
pool and CRL cache: set the main app's runner up first.

One middleware binds the log context (``correlation_id`` from ``client-request-id`` or
fresh, echoed in the answer) and renders every error as ``{"error", "message"}``. Every
API answer carries Strict-Transport-Security (``common.tls.strict_transport_security``);
the plain-HTTP CRL listener's do not.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from ca import bootstrap, lifecycle, registration, renewal, revocation, sync
from ca.admin_tokens import AdminTokenVerifier, JwksKeySource, KeySource
from ca.authority import load_authority
from ca.bodies import MAX_BODY_BYTES, Configuration, ErrorAnswer, json_response
from ca.broker_admin import BrokerAdmin, RabbitManagement
from ca.errors import CaError, InvalidRequest, RequestTooLarge
from ca.queries import DatabaseAdmins
from ca.resources import AUTHORITY, BROKER, CLOCK, POOL, SETTINGS, VERIFIER, Clock, utc_now
from ca.revocation import CRLS, MAIN_APP, CrlCache
from ca.settings import Settings
from common.contracts import AGENT_CLIENT_ID, CA_SCOPE
from common.tls import client_context, strict_transport_security

log = structlog.get_logger("ca")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_AIOHTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def create_app(
    settings: Settings,
    *,
    key_source: KeySource | None = None,
    broker: BrokerAdmin | None = None,
    clock: Clock | None = None,
) -> web.Application:
    """The CA's HTTPS application. Raises ConfigurationError for unusable CA files."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app.on_response_prepare.append(strict_transport_security)
    authority = load_authority(
        pta_cert_file=settings.pta_ca_cert_file,
        pta_key_file=settings.pta_ca_key_file,
        service_cert_file=settings.service_ca_cert_file,
        service_key_file=settings.service_ca_key_file,
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock or utc_now
    app[AUTHORITY] = authority
    app[CRLS] = CrlCache(
        authority=authority,
        max_age_s=settings.crl_cache_s,
        next_update_hours=settings.crl_next_update_hours,
        clock=app[CLOCK],
    )
    # The JWKS is fetched over TLS verified against the STS CA bundle only; building the
    # context here fails at start on a bad bundle (TlsConfigError names the setting).
    sts_tls = client_context(settings.sts_ca_bundle) if key_source is None else None
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_outbound(key_source, broker, sts_tls))
    app.cleanup_ctx.append(lifecycle.sweeper)
    app.router.add_get("/.well-known/pta-configuration", configuration)
    app.router.add_post("/agents/register", registration.register)
    app.router.add_post("/agents/bootstrap", bootstrap.bootstrap)
    app.router.add_post("/agents/heartbeat", bootstrap.heartbeat)
    app.router.add_post("/agents/renew", renewal.renew)
    app.router.add_get("/agents/self", bootstrap.agent_self)
    app.router.add_post("/agents/sync", sync.sync_users)
    app.router.add_get("/agents", bootstrap.list_agents)
    app.router.add_delete("/agents/{agent_id}", revocation.delete_agent)
    return app


def create_crl_app(main: web.Application) -> web.Application:
    """The plain-HTTP CRL application, serving from ``main``'s pool and CRL cache."""
    app = web.Application(middlewares=[error_middleware])
    app[MAIN_APP] = main
    app.router.add_get("/pta.crl", revocation.pta_crl)
    app.router.add_get("/service.crl", revocation.service_crl)
    return app


async def configuration(request: web.Request) -> web.Response:
    """``GET /.well-known/pta-configuration``: where to sign in and fetch CRLs."""
    settings = request.app[SETTINGS]
    return json_response(
        Configuration(
            authority=settings.sts_url,
            client_id=AGENT_CLIENT_ID,
            scope=CA_SCOPE,
            crl_url=settings.crl_url,
        )
    )


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await asyncpg.create_pool(
        settings.postgres_dsn.get_secret_value(),
        min_size=1,
        max_size=settings.postgres_pool_size,
        command_timeout=settings.outbound_timeout_s,
        timeout=settings.outbound_timeout_s,
    )
    app[POOL] = pool
    try:
        yield
    finally:
        await pool.close()


def _outbound(
    key_source: KeySource | None, broker: BrokerAdmin | None, sts_tls: ssl.SSLContext | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def outbound(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        timeout = aiohttp.ClientTimeout(total=settings.outbound_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            app[BROKER] = broker or RabbitManagement(
                base_url=settings.amqp_management_url,
                user=settings.amqp_admin_user,
                password=settings.amqp_admin_password.get_secret_value(),
                session=session,
                timeout_s=settings.outbound_timeout_s,
                sts_user=settings.sts_broker_user,
            )
            source = key_source
            if source is None:
                assert sts_tls is not None  # built in create_app when no key_source is given
                source = JwksKeySource(
                    sts_url=settings.sts_url,
                    session=session,
                    ssl_context=sts_tls,
                    timeout_s=settings.outbound_timeout_s,
                    refresh_min_interval_s=settings.jwks_refresh_min_interval_s,
                )
            app[VERIFIER] = AdminTokenVerifier(
                source,
                DatabaseAdmins(app[POOL]),
                sts_url=settings.sts_url,
                leeway_s=settings.token_leeway_s,
            )
            yield

    return outbound


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the log context, render CaError and aiohttp errors as the contract's JSON, and
    log one ``request_served`` line per request (status, error code, duration)."""
    started = time.perf_counter()
    correlation_id = _correlation_id(request.headers.get("client-request-id"))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        correlation_id=correlation_id, method=request.method, path=request.path
    )
    try:
        response, error = await _handle(request, handler)
        log.info(
            "request_served",
            status=response.status,
            error=error,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
    finally:
        structlog.contextvars.clear_contextvars()
    response.headers["client-request-id"] = correlation_id
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _handle(request: web.Request, handler: Handler) -> tuple[web.StreamResponse, str | None]:
    try:
        return await handler(request), None
    except CaError as exc:
        return _refused(exc), exc.code
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return _refused(RequestTooLarge()), RequestTooLarge.code
        code = _AIOHTTP_CODES.get(exc.status, InvalidRequest.code)
        return json_response(ErrorAnswer(error=code, message=exc.reason), status=exc.status), code
    except Exception:
        # The top of a request (docs/contributing.md §5): log with the traceback, answer 500.
        log.exception("request_failed")
        answer = ErrorAnswer(error=CaError.code, message=CaError().message)
        return json_response(answer, status=500), CaError.code


def _refused(exc: CaError) -> web.Response:
    """The error's JSON; its message and (log-only) detail go to the log."""
    log.warning("request_refused", error=exc.code, reason=exc.message, detail=exc.detail or None)
    return json_response(ErrorAnswer(error=exc.code, message=exc.message), status=exc.status)


def _correlation_id(header: str | None) -> str:
    """The client's ``client-request-id`` if it is a UUID (as MSAL sends it), else fresh."""
    if header:
        try:
            return str(uuid.UUID(header))
        except ValueError:
            pass
    return str(uuid.uuid4())
