"""Logging set-up shared by every service: structlog, contextvars, redaction, JSON off a TTY.

Configured once in each `main`. Everything a service writes to its log is one JSON object
per line (off a TTY): structlog events, and the records of stdlib loggers (aiohttp's
server and access loggers, asyncio, aiormq, aio-pika, asyncpg, warnings) rendered by the
same processors through `structlog.stdlib.ProcessorFormatter`, a traceback included as
one escaped `exception` string. An uncaught exception at the top of `main` is logged the
same way. A request aiohttp cannot parse (a bad request line or header) is a client
error, not a fault of ours: it is logged `http_request_malformed` at warning level with
the parser's exception class (not its message: that quotes the client's bytes), without
a traceback.

Two processors keep secrets out of every line:
- `redact` drops any event key that names a secret (docs/design.md §7: no
  password, key or token is ever written to a log), so a careless
  `log.info("x", password=...)` writes `"password": "[redacted]"`, not the secret;
- `mask_typed_usernames`: a username typed into a form may hold a password by mistake
  (typed into the wrong field). A `username` (or `*_username`, `login_hint`) value is
  logged only when it is a well-formed user name (`is_user_name`: ASCII `local@domain`,
  at most 256 characters); otherwise it is replaced by `[redacted]` and only its length
  is logged as `<key>_chars`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from common.usernames import is_user_name

_SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|secret|token|access_key|private_key|reply_key|content_key|"
    r"authorization|cookie|code_verifier|client_secret|device_code|key)$",
    re.IGNORECASE,
)
REDACTED = "[redacted]"

_USERNAME_KEY = re.compile(r"(^|_)username$|^login_hint$", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """True for keys like password, reply_key, access_token, client_secret, *_key."""
    return bool(_SECRET_KEY.search(name))


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace the value of every secret-named key."""
    for name in list(event):
        if is_secret_key(name):
            event[name] = REDACTED
    return event


def mask_typed_usernames(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: a username that is not a well-formed user name -> its length."""
    for name in list(event):
        value = event[name]
        if isinstance(value, str) and value and _USERNAME_KEY.search(name):
            if not is_user_name(value):
                event[name] = REDACTED
                event[f"{name}_chars"] = len(value)
    return event


def configure(*, level: str = "INFO", json: bool | None = None, service: str = "") -> None:
    """Configure structlog and stdlib logging once, at the start of a service's main."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
        mask_typed_usernames,
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
    _route_stdlib_logging(processors, renderer)
    sys.excepthook = _log_uncaught


def _route_stdlib_logging(processors: list[Any], renderer: Any) -> None:
    """Foreign libraries log through stdlib logging: render their records like ours."""
    formatter = structlog.stdlib.ProcessorFormatter(
        # _malformed_request after add_log_level (it lowers the level), before
        # format_exc_info (it drops the traceback), which is the last of `processors`.
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            *processors[:-1],
            _malformed_request,
            processors[-1],
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn -> the py.warnings logger -> JSON


def _malformed_request(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """aiohttp's "Error handling request" for a request it could not parse: one short line."""
    record = event.get("_record")
    exc_info = getattr(record, "exc_info", None)
    if isinstance(record, logging.LogRecord) and exc_info and exc_info[1] is not None:
        exc = exc_info[1]
        if isinstance(exc, HttpProcessingError):
            event["event"] = "http_request_malformed"
            event["level"] = "warning"
            event["status"] = exc.code
            # The class only: the parser's message quotes the bytes received, which are the
            # client's (a request line may carry anything, a credential included).
            event["error"] = type(exc).__name__
            event.pop("exc_info", None)
    return event


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """sys.excepthook: an uncaught exception is one JSON line too, not a bare traceback."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    structlog.get_logger("uncaught").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


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
