"""Cloud-only admins are under smart lockout too (a guessed admin could register an agent
and receive every user's password). Own STS and database: locking the admin here must not
disturb other modules.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from infra.stack import Stack
from tests.support.devicecode import login, start_flow, submit
from tests.support.sts_harness import Sts, error_of, running_sts

pytestmark = pytest.mark.stack


async def test_admin_guesses_lock_the_admin_and_success_resets(
    stack: Stack, tmp_path: Path
) -> None:
    async with running_sts(stack, tmp_path, lockout_threshold=3) as sts:
        t = sts.contoso
        # A success first: the counters start (and after it, stay) clear.
        assert (await sts.password_token(t)).status == 200
        for _ in range(2):
            r = await sts.password_token(t, password="Wrong-guess-1")
            assert error_of(await r.json()) == ("invalid_grant", 50126)
        assert (await sts.password_token(t)).status == 200  # resets the count
        codes = []
        for _ in range(4):
            r = await sts.password_token(t, password="Wrong-guess-2")
            codes.append(error_of(await r.json())[1])
        assert codes == [50126, 50126, 50126, 50053], codes
        # Locked: even the right password is refused, and no hash is checked.
        r = await sts.password_token(t)
        assert error_of(await r.json()) == ("invalid_grant", 50053)
        # The other tenant's admin is not affected.
        assert (await sts.password_token(sts.fabrikam)).status == 200


async def test_parallel_admin_guesses_get_at_most_threshold_hash_checks(
    stack: Stack, tmp_path: Path
) -> None:
    """Issue 8 finding 1: 40 guesses at once must not all reach the argon2 check.

    Every answer 50126 is one hash checked; the rest wait for a place in flight and are
    refused 50053 once the admin is locked, and so is the right password afterwards.
    """
    threshold = 4
    async with running_sts(stack, tmp_path, lockout_threshold=threshold) as sts:
        t = sts.contoso

        async def guess(i: int) -> int | None:
            r = await sts.password_token(t, password=f"Wrong-parallel-{i}")
            return error_of(await r.json())[1]

        codes = await asyncio.gather(*(guess(i) for i in range(40)))
        assert set(codes) <= {50126, 50053}, codes
        assert codes.count(50126) <= threshold, codes
        r = await sts.password_token(t)
        assert error_of(await r.json()) == ("invalid_grant", 50053)


@pytest.mark.parametrize(
    "variant",
    [
        "adm\u0130n@{domain}",  # capital I with dot: Python and PostgreSQL fold it apart
        "ADM\u0130N@{domain}",
        "\uff41\uff44\uff4d\uff49\uff4e@{domain}",  # fullwidth: NFKC maps it to "admin"
        "ADMIN@{domain}",
        "adm\u0131n@{domain}",  # dotless i
        " admin@{domain} ",
    ],
)
async def test_unicode_variants_of_a_locked_admin_cannot_sign_in(
    stack: Stack, tmp_path: Path, variant: str
) -> None:
    """Issue 8 finding 2: one admin, one lockout, whatever spelling finds them."""
    async with running_sts(stack, tmp_path, lockout_threshold=2) as sts:
        t = sts.contoso
        for i in range(2):
            await sts.password_token(t, password=f"Wrong-{i}")
        r = await sts.password_token(t)
        assert error_of(await r.json()) == ("invalid_grant", 50053)
        name = variant.format(domain=t.domain)
        r = await sts.password_token(t, username=name)
        assert r.status != 200
        assert error_of(await r.json())[1] in (50053, 50034)


async def test_names_of_no_account_add_no_lockout_rows(stack: Stack, tmp_path: Path) -> None:
    """Issue 8 finding 3: the lockout table only holds rows of real accounts."""
    async with running_sts(stack, tmp_path) as sts:
        t = sts.contoso
        flow = await start_flow(sts, t)
        for i in range(5):
            name = f"nobody-{uuid.uuid4().hex}@{t.domain}"
            status, _page = await submit(sts, login(t, flow, username=name, password=f"x{i}"))
            assert status == 400
            r = await sts.password_token(t, username=name, password=f"x{i}")
            assert error_of(await r.json())[1] in (50034, 80001)
        assert await count_lockouts(sts) == 0


async def count_lockouts(sts: Sts) -> int:
    conn = await asyncpg.connect(sts.dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM lockouts"))
    finally:
        await conn.close()
