"""MSAL's username/password flow against the STS served the way `pta-sts` serves it.

MSAL for Python asks home-realm discovery at `https://{hostname}/common/userrealm/...`,
dropping the authority's port. The STS therefore listens on extra sockets
(`PTA_STS_EXTRA_LISTEN`, e.g. `127.0.0.1:443`). Here the app runs through `sts.main.serve`
on a main and an extra port, both with TLS, and MSAL's HTTP client maps the port-less
URL to the extra port, as port 443 would be on a deployed host (the test does not take
the machine's port 443).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msal
import pytest
import pytest_asyncio
import requests

from common import tls
from common.wire import Status
from infra.stack import Stack
from sts.app import create_app
from sts.main import CannotListen, listen_addresses, serve
from sts.settings import StsSettings
from tests.support.signin_harness import (
    ThrowawayTenant,
    consuming,
    create_tenant,
    delete_queue,
    signin_settings,
    wait_started,
)
from tests.support.sts_harness import CA_SCOPE, make_tls, private_database

pytestmark = pytest.mark.stack


@dataclass
class Served:
    settings: StsSettings
    ca: Path
    extra_port: int
    tenant: ThrowawayTenant

    @property
    def client_ssl(self) -> ssl.SSLContext:
        return tls.client_context(self.ca)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    folder = tmp_path_factory.mktemp("sts-msal")
    ca, cert, key = make_tls(folder)
    main_port, extra_port = free_ports(2)
    async with private_database(stack) as dsn:
        tenant = await create_tenant(dsn, agents=1, users={"mia": ("Pw-mia-1", Status.SUCCESS)})
        base = signin_settings(stack, folder, dsn, public_url=f"https://127.0.0.1:{main_port}")
        settings = base.model_copy(
            update={
                "port": main_port,
                "tls_cert_file": cert,
                "tls_key_file": key,
                "extra_listen": (("127.0.0.1", extra_port),),
            }
        )
        app = create_app(settings)
        stop, started = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(
            serve(
                app,
                listen_addresses(settings),
                tls.server_context(cert, key),
                stop=stop,
                started=started,
            )
        )
        try:
            async with asyncio.timeout(20):
                await started.wait()
            await wait_started(app)
            async with consuming(stack, tenant):
                yield Served(settings, ca, extra_port, tenant)
        finally:
            stop.set()
            await server
            await delete_queue(stack, tenant.id)


async def get_json(url: str, ctx: ssl.SSLContext) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, ssl=ctx) as r:
        return r.status, await r.json()


async def test_the_app_answers_on_the_main_and_the_extra_port(served: Served) -> None:
    t = served.tenant
    for port in (served.settings.port, served.extra_port):
        url = f"https://127.0.0.1:{port}/{t.domain}/v2.0/.well-known/openid-configuration"
        status, doc = await get_json(url, served.client_ssl)
        assert status == 200 and doc["issuer"].endswith(f"/{t.id}/v2.0")


async def test_userrealm_answers_managed_for_a_verified_domain(served: Served) -> None:
    t = served.tenant
    base = f"https://127.0.0.1:{served.extra_port}/common/userrealm"
    status, doc = await get_json(
        f"{base}/Anyone@{t.domain.upper()}?api-version=1.0", served.client_ssl
    )
    assert status == 200
    assert doc == {
        "ver": "1.0",
        "account_type": "Managed",
        "domain_name": t.domain,
        "federation_brand_name": t.name,
        "cloud_instance_name": "127.0.0.1",
        "cloud_audience_urn": "urn:federation:MicrosoftOnline",
    }
    for username in ("a@unknown.test", "no-domain", f"a@{uuid.uuid4()}"):
        status, doc = await get_json(f"{base}/{username}?api-version=1.0", served.client_ssl)
        assert status == 200
        assert doc == {"ver": "1.0", "account_type": "Unknown", "cloud_instance_name": "127.0.0.1"}


class PortlessTo443(requests.Session):
    """MSAL's HTTP client on a host where https://127.0.0.1/ (port 443) is `port`."""

    def __init__(self, port: int, ca: Path) -> None:
        super().__init__()
        self.verify = str(ca)
        self.port = port
        self.urls: list[str] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        target = str(url)
        if target.startswith("https://127.0.0.1/"):
            target = f"https://127.0.0.1:{self.port}/" + target.removeprefix("https://127.0.0.1/")
        self.urls.append(target.split("?")[0])
        return super().request(method, target, *args, **kwargs)


# MSAL deprecates ROPC for public clients; it is still the flow docs/design.md asks to support.
@pytest.mark.filterwarnings("ignore:This API has been deprecated:DeprecationWarning")
@pytest.mark.usefixtures("msal_verifies_with_our_bundle")
async def test_msal_username_password_flow_for_a_synced_user(served: Served) -> None:
    t = served.tenant
    http = PortlessTo443(served.extra_port, served.ca)
    authority = f"{served.settings.public_url}/{t.domain}"

    def sign_in() -> dict[str, Any]:
        app = msal.PublicClientApplication(
            "pta-agent", authority=authority, instance_discovery=False, http_client=http
        )
        result: dict[str, Any] = app.acquire_token_by_username_password(
            t.username("mia"), "Pw-mia-1", scopes=[CA_SCOPE]
        )
        return result

    result = await asyncio.to_thread(sign_in)
    assert "access_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == t.username("mia")
    assert result["id_token_claims"]["tid"] == t.id
    realm = f"https://127.0.0.1:{served.extra_port}/common/userrealm/{t.username('mia')}"
    assert realm in http.urls  # MSAL asked home-realm discovery on the port-less URL


async def test_an_address_in_use_stops_the_start(stack: Stack, tmp_path: Path) -> None:
    async with private_database(stack) as dsn:
        settings = signin_settings(stack, tmp_path, dsn)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            app = create_app(settings)
            addresses = [(settings.host, settings.port), ("127.0.0.1", busy)]
            with pytest.raises(CannotListen, match=f"127.0.0.1:{busy}"):
                await serve(app, addresses, None, stop=asyncio.Event())
