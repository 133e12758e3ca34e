"""The STS harness (tests.support.sts_harness) and the app's lifetime."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from infra.stack import Stack
from sts.app import create_app
from sts.queries import DATABASE
from sts.settings import StsSettings
from sts.signing import SigningKeyError
from tests.support.sts_harness import *  # noqa: F403 -- the old import path, until callers move
from tests.support.sts_harness import running_sts

pytestmark = pytest.mark.stack


async def test_app_serves_and_closes_its_pool(stack: Stack, tmp_path: Path) -> None:
    async with running_sts(stack, tmp_path) as sts:
        r = await sts.client.get(f"/{sts.contoso.domain}/discovery/v2.0/keys")
        assert r.status == 200
        db = sts.app[DATABASE]
    with pytest.raises(asyncpg.InterfaceError):  # the pool was closed with the app
        await db._pool.fetchval("SELECT 1")


def test_create_app_refuses_an_empty_key_folder(tmp_path: Path) -> None:
    settings = StsSettings(
        public_url="http://127.0.0.1:1",
        postgres_dsn="postgresql://nobody@127.0.0.1:1/none",
        signing_key_dir=tmp_path,
    )
    with pytest.raises(SigningKeyError, match=r"No \*\.pem key"):
        create_app(settings)
