"""`pta-sts` as a real process: HTTPS from the settings, JSON logs, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from common import tls
from infra.stack import Stack
from tests.support.sts_harness import (
    free_port,
    make_tls,
    new_signing_dir,
    private_database,
)

pytestmark = pytest.mark.stack


async def wait_until_serving(url: str, ca: Path, process: asyncio.subprocess.Process) -> None:
    """Poll the discovery URL until it answers (a process start has no event to await)."""
    context = tls.client_context(ca)
    async with aiohttp.ClientSession() as http, asyncio.timeout(20):
        while True:
            assert process.returncode is None, "pta-sts exited during start-up"
            try:
                async with http.get(url, ssl=context) as r:
                    assert r.status == 200
                    return
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)  # not listening yet


async def test_pta_sts_serves_https_and_stops_on_sigterm(stack: Stack, tmp_path: Path) -> None:
    ca, cert, key = make_tls(tmp_path)
    port = free_port()
    t = stack.demo.tenants[0]
    async with private_database(stack) as dsn:
        env = {
            **os.environ,
            "PTA_STS_PUBLIC_URL": f"https://127.0.0.1:{port}",
            "PTA_STS_PORT": str(port),
            "PTA_STS_TLS_CERT_FILE": str(cert),
            "PTA_STS_TLS_KEY_FILE": str(key),
            "PTA_STS_POSTGRES_DSN": dsn,
            "PTA_STS_SIGNING_KEY_DIR": str(new_signing_dir(tmp_path / "signing")),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sts.main", env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            base = f"https://127.0.0.1:{port}/{t.domain}"
            await wait_until_serving(f"{base}/v2.0/.well-known/openid-configuration", ca, process)
            async with aiohttp.ClientSession() as http:
                r = await http.post(
                    f"{base}/oauth2/v2.0/token",
                    data={
                        "grant_type": "password",
                        "client_id": "pta-agent",
                        "username": t.admin_username,
                        "password": t.admin_password,
                    },
                    ssl=tls.client_context(ca),
                )
                assert r.status == 200
                token = (await r.json())["access_token"]
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.stderr is not None
    output = (await process.stderr.read()).decode()
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "sts_started" in names and "token_issued" in names, output
    assert all(e["service"] == "sts" for e in events)
    assert t.admin_password not in output and token not in output


async def test_pta_sts_refuses_a_lockout_that_trips_after_the_directorys(tmp_path: Path) -> None:
    """Issue 8 finding 10: the stack's old numbers (first lockout = slapd's 60 s window)."""
    env = {
        **os.environ,
        "PTA_STS_PUBLIC_URL": "https://127.0.0.1:1",
        "PTA_STS_POSTGRES_DSN": "postgresql://nobody@127.0.0.1:1/none",
        "PTA_STS_SIGNING_KEY_DIR": str(new_signing_dir(tmp_path / "signing")),
        "PTA_STS_LOCKOUT_THRESHOLD": "4",
        "PTA_STS_LOCKOUT_DURATION_S": "60",
        "PTA_STS_DIRECTORY_LOCKOUT_THRESHOLD": "5",
        "PTA_STS_DIRECTORY_LOCKOUT_WINDOW_S": "60",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sts.main", env=env, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _out, err = await process.communicate()
    assert process.returncode == 2
    assert "smart lockout would not trip before the directory's" in err.decode()
