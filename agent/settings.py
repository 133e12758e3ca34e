"""Settings of the agent daemon and CLI: one frozen object, built once in ``cli.main``.

Every field comes from the command line (where the CLI has an option) or from an
environment variable with the prefix ``PTA_AGENT_`` (``PTA_AGENT_STATE_DIR``,
``PTA_AGENT_HEARTBEAT_INTERVAL_S``, ...). Nothing below ``cli`` reads the environment.
A bad value fails at start with ``SettingsInvalid`` naming the variable and the fix.

The CA URL and the service TLS CA bundle are not settings: they are fixed at registration
and read from the state folder (``agent.json``, ``ca-bundle.pem``), so a changed
environment can never point a registered agent at another cloud.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.errors import AgentError

ENV_PREFIX = "PTA_AGENT_"
DEFAULT_STATE_DIR = Path("/var/lib/pta-agent")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


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
        description="Sign-in requests handled at once (used by the consumer, a later issue).",
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

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


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
