"""Session fixtures: one private stack for the whole test run.

The suite never uses a stack started with `make up`: it starts its own in a fresh temporary
state folder on free ports and stops it at the end. If the stack cannot start, the run fails
with the reason (no silent skip).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from infra.ports import free_port_base
from infra.stack import Stack

# Helpers in tests/support/ assert too: rewrite them like test modules, so a failing
# assert there explains itself as well.
pytest.register_assert_rewrite("tests.support")


def make_state_dir(prefix: str) -> Path:
    # A fresh 0700 folder: the stack user never enters it (infra.stackuser).
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack() -> AsyncIterator[Stack]:
    """The test run's private stack (RabbitMQ, PostgreSQL, slapd), up and seeded."""
    state = make_state_dir("pta-test-")
    # Its own loopback address for the STS, so that the STS can also hold :443 there (for
    # MSAL) even while a `make up` stack holds 127.0.0.1:443.
    public_ip = f"127.0.0.{secrets.randbelow(240) + 10}"
    s = Stack(state, free_port_base(), durable=False, public_ip=public_ip)
    try:
        await s.up()
    except BaseException as exc:
        logs = state / "logs"
        pytest.fail(f"the test stack did not start: {exc}\nlogs: {logs}", pytrace=False)
    try:
        yield s
    finally:
        if os.environ.get("PTA_KEEP_TEST_STATE"):
            s.down()
        else:
            s.purge()  # and PostgreSQL's data folder outside it, as root


@pytest.fixture
def msal_verifies_with_our_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let MSAL's `verify=` (our CA bundle) take effect for this test.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's `verify`
    (psf/requests#3829), and this machine's environment sets them.
    """
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
