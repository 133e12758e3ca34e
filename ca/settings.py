"""The CA's settings: one frozen object, built once in ``ca.main`` and passed down.

Every field is read from the environment with the prefix ``PTA_CA_`` (``PTA_CA_PORT``,
``PTA_CA_POSTGRES_DSN``, ...). Nothing below ``main`` reads ``os.environ`` (docs/contributing.md
section 4). Files must exist when the settings are built, URLs must have the right scheme:
a bad setting fails at start with pydantic's message, which names the field.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, FilePath, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.contracts import DEFAULT_STS_BROKER_USER, MAX_AGENTS_PER_TENANT


def _url(*schemes: str, credentials: bool = True) -> AfterValidator:
    """A validator: the URL has one of ``schemes``, a host, and (optionally) no user info."""

    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"must be a {' or '.join(schemes)} URL with a host, got {value!r}")
        if not credentials and (parts.username or parts.password):
            raise ValueError("must not carry credentials (agents get their own at bootstrap)")
        return value.rstrip("/")

    return AfterValidator(check)


HttpsUrl = Annotated[str, _url("https")]
HttpUrl = Annotated[str, _url("http", "https")]
AmqpUrl = Annotated[str, _url("amqp", "amqps", credentials=False)]
Port = Annotated[int, Field(ge=0, le=65535)]


class Settings(BaseSettings):
    """Configuration of one CA replica (see the field comments for what each one is)."""

    model_config = SettingsConfigDict(env_prefix="PTA_CA_", frozen=True, extra="forbid")

    # Listeners: HTTPS (bearer and mutual-TLS endpoints) and plain HTTP for the CRLs.
    host: str = "127.0.0.1"
    port: Port = 8443
    crl_port: Port = 8080
    # How agents and admins reach this CA, and the CRL base URL published in
    # /.well-known/pta-configuration (default http://<host>:<crl_port>).
    public_url: HttpsUrl = "https://127.0.0.1:8443"
    crl_public_url: HttpUrl | None = None

    # The HTTPS server certificate (issued by the service TLS CA) and its key.
    tls_cert_file: FilePath
    tls_key_file: FilePath
    # The PTA CA: signs agent client certificates and nothing else (docs/design.md §3.1).
    pta_ca_cert_file: FilePath
    pta_ca_key_file: FilePath
    # The service TLS CA: only its CRL is published here.
    service_ca_cert_file: FilePath
    service_ca_key_file: FilePath

    postgres_dsn: SecretStr
    postgres_pool_size: int = Field(default=10, ge=1, le=100)

    # The STS that issues admin tokens: issuer {sts_url}/{tid}/v2.0, JWKS over TLS
    # verified against sts_ca_bundle only.
    sts_url: HttpsUrl
    sts_ca_bundle: FilePath
    jwks_refresh_min_interval_s: float = Field(default=60.0, ge=0)
    token_leeway_s: int = Field(default=60, ge=0, le=300)

    # RabbitMQ management API (admin) and the AMQP URL handed to agents (no credentials).
    amqp_management_url: HttpUrl
    amqp_admin_user: str = Field(min_length=1)
    amqp_admin_password: SecretStr
    agent_amqp_url: AmqpUrl
    # The STS's broker user: granted its permissions in each tenant vhost the CA creates,
    # and named to agents as the only publisher of requests (bootstrap ``publisher``).
    sts_broker_user: str = Field(default=DEFAULT_STS_BROKER_USER, min_length=1)
    outbound_timeout_s: float = Field(default=10.0, gt=0, le=120)

    agent_cert_lifetime_days: int = Field(default=180, ge=1, le=825)
    access_key_lifetime_s: int = Field(default=86_400, ge=60)
    heartbeat_interval_s: int = Field(default=600, ge=1)
    # An envelope carries at most 40 wrapped keys (common.wire.MAX_RECIPIENTS, docs/design.md).
    max_agents_per_tenant: int = Field(
        default=MAX_AGENTS_PER_TENANT, ge=1, le=MAX_AGENTS_PER_TENANT
    )
    renew_before_days: int = Field(default=30, ge=0)
    # Certificate renewal (ca.renewal): one agent of a tenant at a time, under a lease
    # that frees itself after renewal_lease_s if the agent never confirms (by its first
    # bootstrap with the new certificate); agents whose
    # certificate expired are deleted every expiry_sweep_interval_s (0: never).
    renewal_lease_s: int = Field(default=300, ge=1, le=3600)
    # retry_after_s told to the others: at most this, as a renewal usually ends in seconds.
    renewal_retry_after_s: int = Field(default=15, ge=1, le=3600)
    expiry_sweep_interval_s: float = Field(default=300.0, ge=0)
    # Agent lifecycle (ca.lifecycle): the same sweep deletes agents silent (no heartbeat)
    # for inactive_delete_days; two processes using one agent identity within
    # clone_window_s (default: two heartbeat intervals) make it a suspected clone.
    inactive_delete_days: float = Field(default=10.0, gt=0)
    clone_window_s: float | None = Field(default=None, gt=0)
    crl_cache_s: float = Field(default=30.0, ge=0)
    crl_next_update_hours: int = Field(default=24, ge=1)

    log_level: str = "INFO"

    @property
    def crl_url(self) -> str:
        """The CRL base URL clients fetch ``/pta.crl`` and ``/service.crl`` from."""
        return self.crl_public_url or f"http://{self.host}:{self.crl_port}"

    @property
    def pta_crl_url(self) -> str:
        """The CRL distribution point named in every agent certificate."""
        return f"{self.crl_url}/pta.crl"
