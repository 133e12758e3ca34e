"""The STS's settings: one frozen object, read from `PTA_STS_*` environment variables.

Built once in `sts.main` and passed down (STYLE.md section 4); nothing below `main` reads
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
- `PTA_STS_TENANT_CACHE_TTL_S` (30): how long a resolved `/{tenant}` is cached.
- `PTA_STS_DB_TIMEOUT_S` (5): bound on every database call, pool acquire included.
- `PTA_STS_DB_POOL_SIZE` (10): asyncpg pool size.
- `PTA_STS_PASSWORD_HASH_WORKERS` (4): threads verifying argon2id hashes (each uses
  ~64 MiB while it runs, so this bounds memory too).
- `PTA_STS_LOG_LEVEL` (`INFO`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "PTA_STS_"

PositiveSeconds = Annotated[int, Field(gt=0, le=86_400)]


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
    tenant_cache_ttl_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    db_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    db_pool_size: Annotated[int, Field(ge=1, le=200)] = 10
    password_hash_workers: Annotated[int, Field(ge=1, le=64)] = 4
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

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
