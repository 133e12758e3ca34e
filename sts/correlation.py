"""Per-request correlation: the ids that tie a client's request to our logs and answers.

The middleware runs first on every request (docs/contributing.md §7). It takes the client's
`client-request-id` header when it is a UUID (MSAL sends one; anything else could be log
injection) or makes a fresh one, makes a fresh trace id, binds `correlation_id` with
structlog contextvars for every log line of the request, and sends both back as
`client-request-id` and `x-ms-request-id`, as Entra does. Handlers add `tenant_id` with
`bind_tenant` once the `/{tenant}` segment is resolved. Context is cleared at the end of
each request: aiohttp serves a keep-alive connection's requests in one task, so a
binding left behind would leak into the next request.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

CLIENT_REQUEST_ID = "client-request-id"
TRACE_HEADER = "x-ms-request-id"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The ids of one request, and when it started (monotonic seconds)."""

    correlation_id: str
    trace_id: str
    started: float = field(default_factory=time.monotonic)

    def elapsed_ms(self) -> float:
        """Milliseconds since the request started, rounded to 0.1 ms."""
        return round((time.monotonic() - self.started) * 1000, 1)


CONTEXT = web.RequestKey("correlation", RequestContext)


def correlation_id_from(header: str | None) -> str:
    """The client's id when it is a UUID (canonical spelling), else a fresh one."""
    if header and len(header) <= 64:
        try:
            return str(uuid.UUID(header))
        except ValueError:
            pass
    return str(uuid.uuid4())


def context_of(request: web.Request) -> RequestContext:
    """The request's context; a fresh one if the middleware did not run (never in the app)."""
    ctx = request.get(CONTEXT)
    if ctx is None:
        ctx = RequestContext(correlation_id_from(None), str(uuid.uuid4()))
        request[CONTEXT] = ctx
    return ctx


def bind_tenant(tenant_id: str) -> None:
    """Add the resolved tenant to every later log line of this request."""
    structlog.contextvars.bind_contextvars(tenant_id=tenant_id)


@web.middleware
async def correlation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the correlation id for logs and echo the ids in the response headers."""
    ctx = RequestContext(
        correlation_id_from(request.headers.get(CLIENT_REQUEST_ID)), str(uuid.uuid4())
    )
    request[CONTEXT] = ctx
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(correlation_id=ctx.correlation_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects pass through the error middleware
        exc.headers[CLIENT_REQUEST_ID] = ctx.correlation_id
        exc.headers[TRACE_HEADER] = ctx.trace_id
        raise
    finally:
        structlog.contextvars.clear_contextvars()
    response.headers[CLIENT_REQUEST_ID] = ctx.correlation_id
    response.headers[TRACE_HEADER] = ctx.trace_id
    return response
