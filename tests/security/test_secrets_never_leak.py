"""Security rule: no plaintext password is ever written to a log, the database or a queue.

100 sign-ins with a marked password through the real stack; then the marker is searched
in every log file, a full `pg_dump`, and every message still sitting in the broker.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import uuid
from urllib.parse import quote

import aiohttp
import pytest

from infra.stack import Stack
from tests.e2e.support import password_grant, tenant_doc

pytestmark = pytest.mark.stack


def _mgmt_headers(stack: Stack) -> dict[str, str]:
    raw = f"{stack.demo.rabbitmq_admin_user}:{stack.demo.rabbitmq_admin_password}"
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


async def test_a_marked_password_appears_nowhere(stack: Stack) -> None:
    marker = f"Marker{uuid.uuid4().hex}"
    bulk = tenant_doc(stack, "contoso.test")["bulk_users"]
    async with aiohttp.ClientSession() as http:
        # One attempt per bulk user (users 900..999): no lockout, cloud or directory.
        answers = await asyncio.gather(
            *(
                password_grant(stack, bulk["pattern"].format(n=n), marker, session=http)
                for n in range(900, 1000)
            )
        )
    assert {a.code for a in answers} == {50126}, {a.code for a in answers}
    for answer in answers:
        assert marker not in str(answer.body)

    for path in stack.layout.logs_dir.rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), f"marker found in {path}"

    dump = subprocess.run(
        ["pg_dump", "--data-only", stack.postgres.admin_dsn.rsplit("/", 1)[0] + "/pta"],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    assert b"sign_ins" in dump or b"users" in dump  # the dump really has content
    assert marker.encode() not in dump

    mgmt = stack.rabbitmq.management_url
    async with aiohttp.ClientSession(headers=_mgmt_headers(stack)) as http:
        async with http.get(f"{mgmt}/api/queues") as r:  # every vhost: one per tenant
            queues = await r.json()
        assert queues  # the tenants' queues are there to be searched
        for q in queues:
            vhost, name = quote(q["vhost"], safe=""), quote(q["name"], safe="")
            url = f"{mgmt}/api/queues/{vhost}/{name}/get"
            body = {"count": 1000, "ackmode": "ack_requeue_true", "encoding": "auto"}
            async with http.post(url, json=body) as r:
                messages = await r.json() if r.status == 200 else []
            for m in messages:
                assert marker not in str(m.get("payload", "")), q["name"]
