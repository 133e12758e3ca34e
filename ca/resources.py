"""What the CA's handlers share, under typed ``web.AppKey``s (docs/contributing.md §6).

``ca.app`` fills these in ``create_app`` (values without I/O) and in its ``cleanup_ctx``
generators (the database pool, the HTTP session, the adapters built on them). Handlers
read them with ``request.app[KEY]``. Kept apart from ``ca.app`` so handler modules can
import the keys without importing the application factory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import asyncpg
from aiohttp import web

from ca.admin_tokens import AdminTokenVerifier
from ca.authority import Authority
from ca.broker_admin import BrokerAdmin
from ca.settings import Settings

Clock = Callable[[], dt.datetime]
"""Returns an aware UTC ``now``; injected so tests can move time (renewal, status)."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


SETTINGS = web.AppKey("settings", Settings)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
AUTHORITY = web.AppKey("authority", Authority)
POOL = web.AppKey("pool", asyncpg.Pool)
BROKER = web.AppKey("broker", BrokerAdmin)
VERIFIER = web.AppKey("verifier", AdminTokenVerifier)
