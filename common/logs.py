"""Logging set-up shared by every service: structlog, contextvars, redaction, JSON off a TTY.

Configured once in each `main`. The redaction processor drops any event key that names a
secret (DESIGN.md security rules: no password, key or token is ever written to a log), so a
careless `log.info("x", password=...)` writes `"password": "[redacted]"`, not the secret.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

_SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|secret|token|access_key|private_key|reply_key|content_key|"
    r"authorization|cookie|code_verifier|client_secret|device_code|key)$",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def is_secret_key(name: str) -> bool:
    """True for keys like password, reply_key, access_token, client_secret, *_key."""
    return bool(_SECRET_KEY.search(name))


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace the value of every secret-named key."""
    for name in list(event):
        if is_secret_key(name):
            event[name] = REDACTED
    return event


def configure(*, level: str = "INFO", json: bool | None = None, service: str = "") -> None:
    """Configure structlog and stdlib logging once, at the start of a service's main."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    if service:
        processors.insert(1, _bind_service(service))
    renderer: Any = (
        # orjson: about 6x faster than json.dumps; one line per sign-in on the hot path.
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Foreign libraries (aiohttp access log, aio-pika) go through stdlib logging.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(message)s")


def _orjson_dumps(event: Any, **_kwargs: Any) -> str:
    # Dataclasses go through repr, as with structlog's own JSON renderer: orjson would
    # otherwise serialize every field, including one marked repr=False to hide a secret.
    return orjson.dumps(event, default=repr, option=orjson.OPT_PASSTHROUGH_DATACLASS).decode()


def _bind_service(service: str) -> Any:
    def add_service(
        _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event.setdefault("service", service)
        return event

    return add_service
