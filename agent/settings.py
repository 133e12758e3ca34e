"""Settings of the agent daemon and CLI: one frozen object, built once in ``cli.main``.

Every field comes from the command line (where the CLI has an option) or from an
environment variable with the prefix ``PTA_AGENT_`` (``PTA_AGENT_STATE_DIR``,
``PTA_AGENT_HEARTBEAT_INTERVAL_S``, ...). Nothing below ``cli`` reads the environment.
A bad value fails at start with ``SettingsInvalid`` naming the variable and the fix.

The CA URL and the service TLS CA bundle are not settings: they are fixed at registration
and read from the state folder (``agent.json``, ``ca-bundle.pem``), so a changed
environment can never point a registered agent at another cloud.

Directory settings (``run``, ``sync`` and ``test-logon`` need them; ``register``,
``status`` and ``unregister`` do not, so they are checked by ``directory_settings()``,
not when the object is built):

| variable | meaning |
|---|---|
| ``PTA_AGENT_LDAP_URL`` | ``ldaps://dc1.corp.example:636`` (or ``ldap://``, ``ldapi://``) |
| ``PTA_AGENT_LDAP_BIND_DN`` | the read-only service account that searches |
| ``PTA_AGENT_LDAP_BIND_PASSWORD_FILE`` | a file holding its password (production: mode 0600) |
| ``PTA_AGENT_LDAP_BIND_PASSWORD`` | or the password itself (exactly one of the two) |
| ``PTA_AGENT_LDAP_BASE_DN`` | where users are searched (subtree) |
| ``PTA_AGENT_LDAP_DOMAIN`` | the UPN suffix this directory answers for (``contoso.com``) |
| ``PTA_AGENT_LDAP_LOGIN_ATTRIBUTE`` | ``uid`` (default), ``mail`` or ``userPrincipalName`` |
| ``PTA_AGENT_LDAP_CA_FILE`` | PEM bundle that verifies an ``ldaps://`` server |
| ``PTA_AGENT_LDAP_KIND`` | ``openldap`` (default, ppolicy) or ``ad`` |
| ``PTA_AGENT_LDAP_POOL_SIZE`` | LDAP threads; default min(8, prefetch), at most the prefetch |
| ``PTA_AGENT_LDAP_TIMEOUT_S`` | connect and per-answer timeout (default 5) |
| ``PTA_AGENT_LDAP_DN_CACHE_TTL_S`` | reuse a user's searched DN this long (default 60; 0: off) |
| ``PTA_AGENT_SYNC_INTERVAL_S`` | user sync period inside ``run`` (default 1800; 0 = off) |

The password file is read once, by ``directory_settings()``; one trailing newline is
dropped. The password is a ``SecretStr`` and never appears in a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.directory import DirectoryMisconfigured
from agent.errors import AgentError
from agent.ldap_directory import LdapDirectorySettings

ENV_PREFIX = "PTA_AGENT_"
DEFAULT_STATE_DIR = Path("/var/lib/pta-agent")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LoginAttribute = Literal["uid", "mail", "userPrincipalName"]
DirectoryKind = Literal["openldap", "ad"]

DEFAULT_LDAP_POOL_SIZE: Final = 8
MAX_PASSWORD_FILE_BYTES: Final = 4096

# LdapDirectorySettings field -> the variable that sets it (for messages).
_DIRECTORY_ENV: Final = {
    "url": "PTA_AGENT_LDAP_URL",
    "bind_dn": "PTA_AGENT_LDAP_BIND_DN",
    "bind_password": "PTA_AGENT_LDAP_BIND_PASSWORD_FILE or PTA_AGENT_LDAP_BIND_PASSWORD",
    "base_dn": "PTA_AGENT_LDAP_BASE_DN",
    "domain": "PTA_AGENT_LDAP_DOMAIN",
    "login_attribute": "PTA_AGENT_LDAP_LOGIN_ATTRIBUTE",
    "ca_file": "PTA_AGENT_LDAP_CA_FILE",
    "kind": "PTA_AGENT_LDAP_KIND",
    "pool_size": "PTA_AGENT_LDAP_POOL_SIZE",
    "timeout_s": "PTA_AGENT_LDAP_TIMEOUT_S",
    "dn_cache_ttl_s": "PTA_AGENT_LDAP_DN_CACHE_TTL_S",
}
_REQUIRED: Final = (
    ("ldap_url", "PTA_AGENT_LDAP_URL", "the directory's URL, e.g. ldaps://dc1.corp.example"),
    ("ldap_bind_dn", "PTA_AGENT_LDAP_BIND_DN", "the read-only service account's DN"),
    ("ldap_base_dn", "PTA_AGENT_LDAP_BASE_DN", "the DN under which users are searched"),
    ("ldap_domain", "PTA_AGENT_LDAP_DOMAIN", "the UPN suffix of the users, e.g. contoso.com"),
)


class SettingsInvalid(AgentError):
    """A setting has an invalid value; fix the environment variable or option it names."""


class Settings(BaseSettings):
    """The agent's settings (see the module docstring for where each comes from)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        # PTA_AGENT_SERVER and PTA_AGENT_CA_BUNDLE are options of `register`, not settings.
        extra="ignore",
    )

    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR,
        description="Folder of agent.json, agent.key, agent.crt, pta-ca.pem, ca-bundle.pem.",
    )
    heartbeat_interval_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds between heartbeats; unset: the interval the CA asks for.",
    )
    log_level: LogLevel = "INFO"
    prefetch: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Sign-in requests handled at once (the channel's prefetch).",
    )
    expiry_margin_s: float = Field(
        default=3600.0,
        ge=0,
        description="Stop consuming this long before the certificate expires (if not renewed).",
    )
    drain_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="At shutdown, how long in-flight work and the broker close may take.",
    )
    http_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="Total time one HTTPS call to the CA or STS may take.",
    )
    allow_plaintext_amqp: bool = Field(
        default=False,
        description=(
            "Accept a plain amqp:// broker URL from the CA for a host that is not a "
            "loopback address (the access key and every request would cross the network "
            "unencrypted). Off: only amqps://, or amqp:// to a loopback address."
        ),
    )

    # --- the directory (see the module docstring) ---------------------------------------
    ldap_url: str | None = None
    ldap_bind_dn: str | None = None
    ldap_bind_password: SecretStr | None = None
    ldap_bind_password_file: Path | None = None
    ldap_base_dn: str | None = None
    ldap_domain: str | None = None
    ldap_login_attribute: LoginAttribute = "uid"
    ldap_ca_file: Path | None = None
    ldap_kind: DirectoryKind = "openldap"
    ldap_pool_size: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="LDAP threads; unset: min(8, prefetch). Above the prefetch they idle.",
    )
    ldap_timeout_s: float = Field(default=5.0, gt=0, le=300)
    ldap_dn_cache_ttl_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="Seconds a user's DN found by the service search is reused (0: off).",
    )
    sync_interval_s: float = Field(
        default=1800.0,
        ge=0,
        description="Seconds between user syncs inside `run` (0: never; `pta-agent sync`).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ldap_kind", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("ldap_login_attribute", mode="before")
    @classmethod
    def _attribute_name(cls, value: object) -> object:
        # LDAP attribute names are case-insensitive (RFC 4512 section 2.5).
        if isinstance(value, str):
            for name in ("uid", "mail", "userPrincipalName"):
                if value.casefold() == name.casefold():
                    return name
        return value

    @property
    def pool_size(self) -> int:
        """LDAP threads: the setting, or min(8, prefetch)."""
        if self.ldap_pool_size is not None:
            return self.ldap_pool_size
        return min(DEFAULT_LDAP_POOL_SIZE, self.prefetch)

    def directory_settings(self) -> LdapDirectorySettings:
        """The checked directory settings; reads the bind password file.

        Raises SettingsInvalid naming every missing variable, or the first bad one (the
        password is never part of a message).
        """
        missing = [
            f"{env}: set {what}."
            for field, env, what in _REQUIRED
            if not (getattr(self, field) or "").strip()
        ]
        if (self.ldap_bind_password is None) == (self.ldap_bind_password_file is None):
            missing.append(
                "PTA_AGENT_LDAP_BIND_PASSWORD_FILE or PTA_AGENT_LDAP_BIND_PASSWORD: set "
                "exactly one (a file readable only by the agent is the production way)."
            )
        if missing:
            raise SettingsInvalid("; ".join(missing))
        if self.ldap_pool_size is not None and self.ldap_pool_size > self.prefetch:
            raise SettingsInvalid(
                f"PTA_AGENT_LDAP_POOL_SIZE: {self.ldap_pool_size} is above PTA_AGENT_PREFETCH "
                f"({self.prefetch}); threads beyond the prefetch would never be used: lower "
                "it or raise the prefetch."
            )
        assert self.ldap_url and self.ldap_bind_dn and self.ldap_base_dn and self.ldap_domain
        directory = LdapDirectorySettings(
            url=self.ldap_url.strip(),
            bind_dn=self.ldap_bind_dn.strip(),
            bind_password=self._bind_password(),
            base_dn=self.ldap_base_dn.strip(),
            domain=self.ldap_domain.strip().lower(),
            login_attribute=self.ldap_login_attribute,
            ca_file=self.ldap_ca_file,
            timeout_s=self.ldap_timeout_s,
            pool_size=self.pool_size,
            kind=self.ldap_kind,
            dn_cache_ttl_s=self.ldap_dn_cache_ttl_s,
        )
        try:
            directory.check()
        except DirectoryMisconfigured as exc:
            raise SettingsInvalid(name_directory_setting(exc.detail)) from exc
        return directory

    def _bind_password(self) -> str:
        if self.ldap_bind_password is not None:
            return self.ldap_bind_password.get_secret_value()
        path = self.ldap_bind_password_file
        assert path is not None
        name = "PTA_AGENT_LDAP_BIND_PASSWORD_FILE"
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_PASSWORD_FILE_BYTES + 1)
        except OSError as exc:
            raise SettingsInvalid(
                f"{name}: cannot read {path} ({exc.strerror}): check the path and that the "
                "agent's user may read it."
            ) from None
        if len(raw) > MAX_PASSWORD_FILE_BYTES:
            raise SettingsInvalid(f"{name}: {path} is too large to hold a password.")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SettingsInvalid(f"{name}: {path} is not UTF-8 text.") from None
        # One trailing newline is how editors and `echo` end a file; it is not part of it.
        password = text.removesuffix("\n").removesuffix("\r")
        if not password:
            raise SettingsInvalid(
                f"{name}: {path} is empty (an empty password would bind anonymously)."
            )
        return password


def name_directory_setting(problem: str) -> str:
    """``problem`` (``LdapDirectorySettings.check`` text, ``"<field>: ..."``) with the field
    replaced by the environment variable that sets it, so the operator knows what to fix."""
    field, sep, rest = problem.strip().strip("()").partition(": ")
    env = _DIRECTORY_ENV.get(field)
    return f"{env}: {rest}" if sep and env else problem


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from ``overrides`` (command-line values) and the environment.

    ``None`` overrides are ignored, so an option the operator did not give falls back to
    the environment, then to the default. Raises SettingsInvalid naming each bad field.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise SettingsInvalid(problems) from exc
