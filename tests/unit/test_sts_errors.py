"""STS errors: wire identity of every class, Entra's JSON shape, HTML on browser routes."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.wire import Status
from sts import errors
from sts.correlation import correlation_middleware
from sts.errors import (
    AGENT_STATUS_ERRORS,
    BROWSER_ROUTE_PREFIX,
    InvalidCredentials,
    OAuthError,
    TenantNotFound,
    error_body,
    error_middleware,
)

OAUTH_ERRORS = {
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "invalid_scope", "authorization_pending", "slow_down",
    "expired_token", "access_denied", "temporarily_unavailable", "server_error",
}  # fmt: skip


def all_error_classes() -> list[type[OAuthError]]:
    found = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, OAuthError)
    ]
    assert len(found) > 30
    return found


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_has_a_wire_identity_and_a_default_message(cls: type[OAuthError]) -> None:
    assert cls.error in OAUTH_ERRORS
    assert cls.status in (400, 401, 404, 405, 413, 500, 503)
    assert cls.__doc__ and cls.__doc__.strip()
    if cls.code is not None:
        assert 50_000 <= cls.code <= 9_999_999


# docs/design.md §5, row by row.
DESIGN_TABLE = {
    Status.INVALID_CREDENTIALS: 50126,
    Status.PASSWORD_EXPIRED: 50144,
    Status.MUST_CHANGE_PASSWORD: 50055,
    Status.ACCOUNT_LOCKED: 50053,
    Status.ACCOUNT_DISABLED: 50057,
    Status.ACCOUNT_EXPIRED: 50057,
    Status.LOGON_HOURS: 50053,
    Status.INVALID_USERNAME: 80004,
    Status.DIRECTORY_UNAVAILABLE: 80007,
    Status.DIRECTORY_TIMEOUT: 80002,
    Status.DECRYPT_FAILED: 80010,
    Status.KEY_NOT_FOUND: 80011,
    Status.AGENT_ERROR: 80005,
}


def test_agent_statuses_map_to_the_design_table() -> None:
    assert set(AGENT_STATUS_ERRORS) == set(Status) - {Status.SUCCESS}
    assert {s: cls.code for s, cls in AGENT_STATUS_ERRORS.items()} == DESIGN_TABLE
    for status, cls in AGENT_STATUS_ERRORS.items():
        expected = "temporarily_unavailable" if str(cls.code).startswith("8") else "invalid_grant"
        if status is Status.INVALID_USERNAME:
            expected = "invalid_grant"
        assert cls.error == expected, status


def test_entra_shaped_body() -> None:
    now = dt.datetime(2025, 1, 9, 2, 2, 12, tzinfo=dt.UTC)
    body = error_body(InvalidCredentials(), trace_id="t-1", correlation_id="c-1", now=now)
    assert body["error"] == "invalid_grant"
    assert body["error_codes"] == [50126]
    assert body["timestamp"] == "2025-01-09 02:02:12Z"
    assert body["trace_id"] == "t-1" and body["correlation_id"] == "c-1"
    description = str(body["error_description"])
    assert description.startswith("AADSTS50126: Error validating credentials")
    assert "Correlation ID: c-1" in description


@pytest.mark.parametrize(
    ("segment", "is_echoed"),
    [("contoso.test", True), ("x" * 200, False), ("a\nb", False), ("", False)],
)
def test_tenant_not_found_echoes_only_short_printable_segments(
    segment: str, is_echoed: bool
) -> None:
    message = TenantNotFound(segment).message
    assert message.startswith("AADSTS90002: ")
    assert (f"'{segment}'" in message) is is_echoed


async def _serve(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_middleware_renders_json_html_and_hides_faults() -> None:
    async def api(_: web.Request) -> web.Response:
        raise InvalidCredentials()

    async def page(_: web.Request) -> web.Response:
        raise InvalidCredentials("<script>alert(1)</script>")

    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("secret-detail-123")

    app = web.Application(middlewares=[correlation_middleware, error_middleware])
    app.router.add_post("/api", api)
    app.router.add_get("/page", page, name=f"{BROWSER_ROUTE_PREFIX}test")
    app.router.add_get("/boom", boom)
    client = await _serve(app)
    try:
        correlation = str(uuid.uuid4())
        r = await client.post("/api", headers={"client-request-id": correlation.upper()})
        body = await r.json()
        assert r.status == 400 and body["error_codes"] == [50126]
        assert body["correlation_id"] == correlation == r.headers["client-request-id"]
        assert r.headers["Cache-Control"] == "no-store"

        r = await client.post("/api", headers={"client-request-id": "not-a-uuid <b>"})
        assert uuid.UUID((await r.json())["correlation_id"])  # a fresh one, not the header

        r = await client.get("/page")
        html = await r.text()
        assert r.status == 400 and r.content_type == "text/html"
        assert "AADSTS50126" in html and r.headers["client-request-id"] in html
        assert "<script>" not in html and "&lt;script&gt;" in html

        r = await client.get("/boom")
        assert r.status == 500
        assert (await r.json())["error"] == "server_error"
        assert "secret-detail-123" not in await r.text()

        r = await client.put("/api")
        assert r.status == 405 and r.headers["Allow"] == "POST"
    finally:
        await client.close()
