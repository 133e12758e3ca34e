"""Fixtures shared by the agent's integration tests: an in-process stand-in for the CA
and STS (tests.support.fake_cloud) with its own certificates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.fake_cloud import FakeCloud, Material, make_material


@pytest.fixture
def material(tmp_path: Path) -> Material:
    directory = tmp_path / "pki"
    directory.mkdir()
    return make_material(directory)


@pytest_asyncio.fixture
async def cloud(material: Material) -> AsyncIterator[FakeCloud]:
    fake = FakeCloud(material)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
