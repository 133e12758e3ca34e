"""The STS's settings: one frozen object, read from `PTA_STS_*` environment variables.

Built once in `sts.main` and passed down (docs/contributing.md §4); nothing below `main` reads
the environment. A bad value fails at start with a message that names the variable
(`settings_error_message`), never at the first request.

- `PTA_STS_PUBLIC_URL` (required): the base URL clients use, e.g.
  `https://127.0.0.1:27117`; issuers are `{public_url}/{tenant id}/v2.0`.
- `PTA_STS_HOST`, `PTA_STS_PORT` (`127.0.0.1`, 27117): where to listen.
- `PTA_STS_TLS_CERT_FILE`, `PTA_STS_TLS_KEY_FILE` (unset): the HTTPS certificate and key;
  both unset means plain HTTP, for in-process tests only.
- `PTA_STS_POSTGRES_DSN` (required): the cloud database.
- `PTA_STS_SIGNING_KEY_DIR` (required): folder of ES256 (P-256) private keys `*.pem`,
  mode 0600; all are published in the JWKS, the newest by mtime signs.
- `PTA_STS_ACCESS_TOKEN_LIFETIME_S` (3600): access and ID token lifetime.
- `PTA_STS_DEVICE_CODE_LIFETIME_S` (900), `PTA_STS_DEVICE_POLL_INTERVAL_S` (5): RFC 8628.
- `PTA_STS_AUTH_CODE_LIFETIME_S` (60): how long an authorization code can be redeemed.
- `PTA_STS_REFRESH_TOKEN_LIFETIME_S` (86400): a refresh token's sliding lifetime (each
  rotation starts it again); `PTA_STS_REFRESH_TOKEN_MAX_LIFETIME_S` (7776000, 90 days):
  the absolute end of a sign-in's refresh tokens, at least the sliding lifetime.
- `PTA_STS_TENANT_CACHE_TTL_S` (30): how long a resolved `/{tenant}` is cached.
- `PTA_STS_DB_TIMEOUT_S` (5): bound on every database call, pool acquire included.
- `PTA_STS_DB_POOL_SIZE` (10): asyncpg pool size.
- `PTA_STS_PASSWORD_HASH_WORKERS` (4): threads verifying argon2id hashes (each uses
  ~64 MiB while it runs, so this bounds memory too).
- `PTA_STS_LOG_LEVEL` (`INFO`).

Sign-in through the agents (`sts.passwords`, `sts.dispatcher`, `sts.lockout`):
- `PTA_STS_AMQP_URL` (unset): the broker (`amqps://`, or `amqp://` on a trusted network),
  as the STS's own broker user and without a vhost: the STS opens one connection per
  tenant vhost (`pta.<tenant id>`), where the CA grants this user its permissions
  (`ca.broker_admin.sts_permissions`); its name is the `user_id` of every request.
  `?cafile=/path/ca.pem` names the CA bundle that verifies the broker. Unset: synced
  users get AADSTS80001 (cloud-only admins still sign in).
- `PTA_STS_INSTANCE_ID` (`sts`): names this replica's reply queue
  (`sts.<instance id>.<random>`); letters, digits, `-`, `_`.
- `PTA_STS_REQUEST_TIMEOUT_S` (10): the deadline of one password validation (envelope
  `expires_at`, message expiration), at most 120 (`common.envelope.MAX_LIFETIME_S`).
- `PTA_STS_CONSUMER_CHECK_INTERVAL_S` (2): how often, at most, a tenant queue's consumer
  count is re-read from the broker (in the background) to answer 80001 at once.
- `PTA_STS_LOCKOUT_THRESHOLD` (10), `PTA_STS_LOCKOUT_DURATION_S` (60),
  `PTA_STS_LOCKOUT_MAX_DURATION_S` (3600): smart lockout; keep the threshold below the
  directory's own (slapd's ppolicy `pwdMaxFailure`, AD's lockout threshold), which the
  directory settings below make a start-up check.
- `PTA_STS_LOCKOUT_SECRET` (unset; the stack always sets one): a per-deployment secret
  (at least 32 characters, the same on every replica) keying the fingerprints of recent
  wrong passwords: repeating one wrong password counts once, and within
  `PTA_STS_LOCKOUT_REPEAT_WINDOW_S` (900; 0 turns it off) of the last failure a repeat is
  answered AADSTS50126 without reaching the directory at all. Unset: every failure counts
  and every attempt is sent.
- `PTA_STS_DIRECTORY_LOCKOUT_THRESHOLD`, `PTA_STS_DIRECTORY_LOCKOUT_WINDOW_S` (unset):
  the directory's own lockout (slapd: `pwdMaxFailure`, `pwdFailureCountInterval`; AD:
  lockout threshold, observation window). When set, the STS refuses to start unless its
  smart lockout lets fewer failures through within that window (widened by the request
  timeout and a 10 s margin) than the directory's threshold; unset, it logs a warning.
- `PTA_STS_EXTRA_LISTEN` (empty): comma-separated `host:port` list of additional sockets
  serving the same app (same TLS), e.g. `127.0.0.1:443` for MSAL, which asks
  `https://{host}/common/userrealm/...` without the port.
- `PTA_STS_SIGNIN_LOG_BATCH` (200), `PTA_STS_SIGNIN_LOG_FLUSH_INTERVAL_S` (0.2),
  `PTA_STS_SIGNIN_LOG_QUEUE_SIZE` (10000): the sign-in log writer's batch size, flush
  interval and bounded queue (entries beyond it are dropped and counted).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sts.lockout import LockoutPolicy

ENV_PREFIX = "PTA_STS_"

PositiveSeconds = Annotated[int, Field(gt=0, le=86_400)]
_90_DAYS_S = 90 * 86_400

# Slack on top of the directory's window and the request timeout (clock skew, queueing).
DIRECTORY_WINDOW_MARGIN_S = 10.0

_INSTANCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:443`) to a pair; raises ValueError naming the item."""
    item = value.strip()
    host, sep, port_text = item.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) <= 65_535:
        raise ValueError(f"{item!r} is not host:port (e.g. 127.0.0.1:443)")
    return host, int(port_text)


class StsSettings(BaseSettings):
    """Everything the STS needs to start; see the module docstring for each variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    public_url: str
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65_535)] = 27117
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    postgres_dsn: str = Field(min_length=1)
    signing_key_dir: Path
    access_token_lifetime_s: PositiveSeconds = 3600
    device_code_lifetime_s: Annotated[int, Field(ge=60, le=3600)] = 900
    device_poll_interval_s: Annotated[int, Field(ge=1, le=60)] = 5
    auth_code_lifetime_s: Annotated[int, Field(ge=10, le=600)] = 60
    refresh_token_lifetime_s: Annotated[int, Field(ge=60, le=_90_DAYS_S)] = 86_400
    refresh_token_max_lifetime_s: Annotated[int, Field(ge=60, le=_90_DAYS_S)] = _90_DAYS_S
    tenant_cache_ttl_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    db_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    db_pool_size: Annotated[int, Field(ge=1, le=200)] = 10
    password_hash_workers: Annotated[int, Field(ge=1, le=64)] = 4
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    amqp_url: str | None = None
    instance_id: str = "sts"
    request_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    consumer_check_interval_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    lockout_threshold: Annotated[int, Field(ge=1, le=1000)] = 10
    lockout_duration_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    lockout_max_duration_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = 3600.0
    lockout_secret: SecretStr | None = None
    lockout_repeat_window_s: Annotated[float, Field(ge=0, le=86_400)] = 900.0
    directory_lockout_threshold: Annotated[int, Field(ge=1, le=10_000)] | None = None
    # 0 (slapd: failures never expire) cannot be honoured: no cloud lockout is short of it.
    directory_lockout_window_s: Annotated[float, Field(gt=0, le=86_400)] | None = None
    extra_listen: Annotated[tuple[tuple[str, int], ...], NoDecode] = ()
    signin_log_batch: Annotated[int, Field(ge=1, le=10_000)] = 200
    signin_log_flush_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    signin_log_queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL such as https://sts.example.com")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must have no query, fragment or user info")
        # The issuer is {public_url}/{tenant}/v2.0: one spelling, no trailing slash.
        return value.rstrip("/")

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError("must be an amqp:// or amqps:// URL such as amqps://sts:pw@host")
        if not parts.username:
            raise ValueError("must name the STS's broker user (amqps://sts:pw@host)")
        if parts.path not in ("", "/"):
            raise ValueError(
                "must name no vhost: the STS connects to each tenant's vhost "
                "(pta.<tenant id>) itself; drop the path"
            )
        return value

    @field_validator("instance_id")
    @classmethod
    def _check_instance_id(cls, value: str) -> str:
        if not _INSTANCE_ID.match(value):
            raise ValueError("must be 1 to 64 letters, digits, '-' or '_' (e.g. sts1)")
        return value

    @field_validator("lockout_secret")
    @classmethod
    def _check_lockout_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("extra_listen", mode="before")
    @classmethod
    def _parse_extra_listen(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(parse_listen(item) for item in value.split(",") if item.strip())
        return value

    @field_validator("signing_key_dir")
    @classmethod
    def _check_key_dir(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a folder; create it with an ES256 key (*.pem)")
        return value

    @model_validator(mode="after")
    def _check_tls_pair(self) -> StsSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                f"set both {ENV_PREFIX}TLS_CERT_FILE and {ENV_PREFIX}TLS_KEY_FILE, or neither "
                "(plain HTTP, for tests only)"
            )
        return self

    @model_validator(mode="after")
    def _check_lockout_durations(self) -> StsSettings:
        if self.lockout_max_duration_s < self.lockout_duration_s:
            raise ValueError(
                f"{ENV_PREFIX}LOCKOUT_MAX_DURATION_S must be at least "
                f"{ENV_PREFIX}LOCKOUT_DURATION_S"
            )
        return self

    @model_validator(mode="after")
    def _check_lockout_below_directory(self) -> StsSettings:
        """Refuse a smart lockout that would not trip before the directory's own.

        The directory locks after `directory_lockout_threshold` failed binds within
        `directory_lockout_window_s`. Its clock and the cloud's differ by up to one request
        (a bind happens before its answer is counted), so the window is widened by the
        request timeout and `DIRECTORY_WINDOW_MARGIN_S`; the cloud must let fewer failures
        than the threshold through in any such window (`LockoutPolicy.failures_within`).
        """
        if self.directory_lockout_threshold is None:
            return self
        if self.directory_lockout_window_s is None:
            raise ValueError(
                f"{ENV_PREFIX}DIRECTORY_LOCKOUT_WINDOW_S must be set with "
                f"{ENV_PREFIX}DIRECTORY_LOCKOUT_THRESHOLD"
            )
        window = self.directory_lockout_window_s + self.request_timeout_s
        window += DIRECTORY_WINDOW_MARGIN_S
        passed = self.lockout_policy().failures_within(window)
        if passed >= self.directory_lockout_threshold:
            raise ValueError(
                f"smart lockout would not trip before the directory's: {ENV_PREFIX}"
                f"LOCKOUT_THRESHOLD={self.lockout_threshold} and LOCKOUT_DURATION_S="
                f"{self.lockout_duration_s:g} let {passed} failures through within "
                f"{window:g} s ({ENV_PREFIX}DIRECTORY_LOCKOUT_WINDOW_S + "
                f"REQUEST_TIMEOUT_S + {DIRECTORY_WINDOW_MARGIN_S:g} s margin), and the "
                f"directory locks at {ENV_PREFIX}DIRECTORY_LOCKOUT_THRESHOLD="
                f"{self.directory_lockout_threshold}: lower the threshold or lengthen "
                "the lockout"
            )
        return self

    def lockout_policy(self) -> LockoutPolicy:
        """The smart lockout policy these settings describe."""
        return LockoutPolicy(
            threshold=self.lockout_threshold,
            duration_s=self.lockout_duration_s,
            max_duration_s=max(self.lockout_max_duration_s, self.lockout_duration_s),
            repeat_window_s=self.lockout_repeat_window_s,
        )

    @model_validator(mode="after")
    def _check_refresh_lifetimes(self) -> StsSettings:
        if self.refresh_token_max_lifetime_s < self.refresh_token_lifetime_s:
            raise ValueError(
                f"{ENV_PREFIX}REFRESH_TOKEN_MAX_LIFETIME_S must be at least "
                f"{ENV_PREFIX}REFRESH_TOKEN_LIFETIME_S (the sliding lifetime)"
            )
        return self

    @property
    def is_https(self) -> bool:
        """True when clients reach the STS over HTTPS (cookies then carry `Secure`)."""
        return self.public_url.startswith("https://")


def settings_error_message(exc: ValidationError) -> str:
    """A start-up message naming each bad variable and what is wrong with it."""
    lines = ["The STS settings are invalid:"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required"
        lines.append(f"  {name}: {message}")
    return "\n".join(lines)


SETTINGS = web.AppKey("settings", StsSettings)
