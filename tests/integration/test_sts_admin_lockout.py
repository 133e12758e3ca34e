"""Cloud-only admins are under smart lockout too (a guessed admin could register an agent
and receive every user's password). Own STS and database: locking the admin here must not
disturb other modules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.stack import Stack
from tests.integration.test_sts_harness import error_of, running_sts

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
