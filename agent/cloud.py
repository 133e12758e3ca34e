"""The CA's HTTP API as the agent uses it (docs/architecture.md "CA HTTP API").

``CaClient`` takes the CA base URL and an SSL context: server-only TLS for the calls that
carry an admin bearer token (``register``, ``delete_agent``), mutual TLS with the agent's
certificate for the calls the agent makes as itself (``bootstrap``, ``heartbeat``,
``self_view``, ``sync_users``). Which one a caller builds is up to it (``state.Registration``).

Answers are parsed into frozen models that ignore fields added later by the CA (the CA
and the agents are upgraded at different times). Errors the CA reports as JSON
``{"error", "message"}`` become ``CaError`` subclasses named after the code, carrying the
CA's message (which says what to do); transport failures are ``agent.https`` errors.
"""

from __future__ import annotations

import ssl
import uuid
from typing import TYPE_CHECKING, ClassVar, Final, TypedDict
from urllib.parse import quote

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr

from agent import __version__
from agent.errors import AgentError, first_paragraph
from agent.https import HttpsClient, ProtocolError, Response, Unreachable, printable

if TYPE_CHECKING:
    from agent.state import Registration


class CaError(AgentError):
    """The CA refused the request."""

    code: ClassVar[str] = ""

    def __init__(self, message: str = "", *, status: int, code: str = "") -> None:
        self.status = status
        self.ca_code = code or self.code
        self.ca_message = message
        text = message.strip() or first_paragraph(type(self).__doc__)
        suffix = f"({self.ca_code}, HTTP {status})" if self.ca_code else f"(HTTP {status})"
        super().__init__(message=f"{text} {suffix}")


class InvalidRequest(CaError):
    """The CA did not understand the request: check that agent and CA versions match."""

    code = "invalid_request"


class CsrRefused(CaError):
    """The CA rejected the certificate request: check that agent and CA versions match."""

    code = "csr_rejected"


class InvalidToken(CaError):
    """The CA did not accept the admin token: check that the CA trusts this STS and that
    this host's clock is right, then sign in again."""

    code = "invalid_token"


class InsufficientRole(CaError):
    """The account may not manage agents: sign in with an account that has the
    hybrid_identity_admin role of the tenant."""

    code = "insufficient_role"


class TenantMismatch(CaError):
    """The account belongs to another tenant: sign in with an admin of this tenant."""

    code = "tenant_mismatch"


class AgentLimitReached(CaError):
    """The tenant already has 40 agents: delete one it no longer uses, then try again."""

    code = "agent_limit_reached"


class ClientCertificateRequired(CaError):
    """The CA wants this agent's client certificate and did not get it: check the state
    folder's agent.crt and agent.key (`pta-agent status`)."""

    code = "client_certificate_required"


class AgentGone(CaError):
    """The cloud no longer accepts this agent: register it again with
    `pta-agent register --force`."""


class CertificateRevoked(AgentGone):
    """This agent's certificate was revoked (an admin deleted the agent): register it
    again with `pta-agent register --force`."""

    code = "certificate_revoked"


class CertificateSuperseded(AgentGone):
    """This agent's certificate was replaced by a newer one (the state folder may have been
    restored from an old backup): register again with `pta-agent register --force`."""

    code = "certificate_superseded"


class AgentNotFound(AgentGone):
    """The cloud does not know this agent (deleted by an admin, or dropped after 10 days
    inactive): register it again with `pta-agent register --force`."""

    code = "agent_not_found"


class CertificateExpired(AgentGone):
    """This agent's certificate expired, so the cloud deleted the agent: register it again
    with `pta-agent register --force`."""

    code = "certificate_expired"


class RenewalInProgress(CaError):
    """Another agent of this tenant is renewing its certificate: the agent tries again
    after the time the CA asked for."""

    code = "renewal_in_progress"
    retry_after_s: float = 60.0


class RenewalReplayed(CaError):
    """The CA refused the renewal because its key was used before: the agent makes a new
    key and tries again."""

    code = "renewal_replayed"


class RenewalNotDue(CaError):
    """The CA renews a certificate only from renew_before_days before it expires: the
    agent keeps its current one and renews when a heartbeat says so."""

    code = "renewal_not_due"


class DomainNotVerified(CaError):
    """The CA refused users whose domain is not a verified domain of this agent's tenant:
    set PTA_AGENT_LDAP_DOMAIN to a domain the tenant has verified, or verify it first."""

    code = "domain_not_verified"


class SyncConflict(CaError):
    """The CA refused a batch of a sync it had already finished or that another agent
    started: run the sync again (each run has a fresh sync id)."""

    code = "sync_conflict"


class BrokerUnavailable(CaError):
    """The CA could not reach the message broker: the agent tries again; if this lasts,
    tell the operator of the cloud service."""

    code = "broker_unavailable"


_BY_CODE: dict[str, type[CaError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest, CsrRefused, InvalidToken, InsufficientRole, TenantMismatch,
        AgentLimitReached, ClientCertificateRequired, CertificateRevoked,
        CertificateSuperseded, AgentNotFound, BrokerUnavailable, DomainNotVerified,
        SyncConflict, CertificateExpired, RenewalInProgress, RenewalReplayed, RenewalNotDue,
    )
}  # fmt: skip


class IssuedCertificate(BaseModel):
    """``POST /agents/register`` answer (201)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    agent_id: str
    tenant_id: str
    certificate: str
    ca_certificate: str
    not_after: AwareDatetime
    kid: str


class RenewedCertificate(IssuedCertificate):
    """``POST /agents/renew`` answer (200): the registration answer and the new serial."""

    serial: str


class BrokerGrant(BaseModel):
    """``POST /agents/bootstrap`` answer: scoped broker credentials (docs/design.md §3.2)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    amqp_url: str
    vhost: str
    username: str
    access_key: SecretStr  # never in a repr or a log
    queue: str
    reply_exchange: str
    # The STS's broker user: the only publisher whose requests the agent handles.
    publisher: str = Field(min_length=1)
    expires_at: AwareDatetime
    agent_id: str
    tenant_id: str
    heartbeat_interval_s: float = Field(gt=0)


class HeartbeatAnswer(BaseModel):
    """``POST /agents/heartbeat`` answer."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    renew: bool
    heartbeat_interval_s: float | None = Field(default=None, gt=0)


class AgentView(BaseModel):
    """``GET /agents/self``: the agent as the cloud sees it. Unknown fields are kept (and
    shown by `pta-agent status --json`), since the CA decides what it reports."""

    model_config = ConfigDict(frozen=True, extra="allow")

    status: str
    last_heartbeat_at: AwareDatetime | None = None
    cert_not_after: AwareDatetime | None = None


class SyncAnswer(BaseModel):
    """``POST /agents/sync`` answer: rows written by this batch, rows deleted (final)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    upserted: int = Field(ge=0)
    deleted: int = Field(ge=0)


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying later: the CA unreachable or overloaded, or the
    CA unable to reach the broker. Refusals (4xx) are not."""
    if isinstance(exc, Unreachable):
        return True
    return isinstance(exc, CaError) and exc.status >= 500


PROCESS_INSTANCE_ID: Final = uuid.uuid4().hex
"""This agent process's instance id, random per start: sent with every bootstrap and
heartbeat so that the CA notices one agent identity used by two processes at once
(clone detection, docs/architecture.md "Agent lifecycle")."""


def registered_trust(registration: Registration) -> str:
    """What TLS errors name as the trust of a registered agent: its pinned CA bundle."""
    return f"the CA bundle this agent was registered with ({registration.dir.ca_bundle})"


class CaClientOptions(TypedDict):
    base_url: str
    ssl_context: ssl.SSLContext
    trust: str
    timeout_s: float


def registered_ca_options(
    registration: Registration, *, timeout_s: float, mutual_tls: bool = True
) -> CaClientOptions:
    """How a registered agent's `CaClient` is built, from its state folder: the CA URL it
    registered with, the pinned bundle and (unless `mutual_tls` is False, for the calls
    an administrator's token authorizes) the agent's certificate and key.

    Callers write `CaClient(**registered_ca_options(...))`, so the class stays a name of
    their module (tests put a fake CA in its place)."""
    context = registration.mutual_tls() if mutual_tls else registration.server_tls()
    return CaClientOptions(
        base_url=registration.record.ca_url,
        ssl_context=context,
        trust=registered_trust(registration),
        timeout_s=timeout_s,
    )


class CaClient:
    """Client of one CA. Use as an async context manager, or call ``close``.

    ``trust`` describes the bundle behind ``ssl_context`` for TLS error messages.
    ``instance_id`` is this process's (tests running two agents in one process pass
    their own).
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext,
        trust: str,
        timeout_s: float,
        version: str = __version__,
        instance_id: str = PROCESS_INSTANCE_ID,
    ) -> None:
        self.instance_id = instance_id
        self._http = HttpsClient(
            base_url, ssl_context=ssl_context, timeout_s=timeout_s, trust=trust,
            service="the CA",
        )  # fmt: skip
        self._base_url, self._trust, self._timeout_s = base_url, trust, timeout_s
        self.version = version

    async def __aenter__(self) -> CaClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.close()

    async def register(
        self,
        token: str,
        csr_pem: bytes,
        *,
        host: str,
        version: str,
        tenant_id: str | None = None,
    ) -> IssuedCertificate:
        """``POST /agents/register`` with an admin bearer token.

        Raises CaError (csr_rejected, invalid_token, insufficient_role, tenant_mismatch,
        agent_limit_reached, ...), https errors.
        """
        body: dict[str, str] = {"csr": csr_pem.decode("ascii"), "host": host, "version": version}
        if tenant_id is not None:
            body["tenant_id"] = tenant_id
        answer = await self._http.call("POST", "/agents/register", json=body, bearer=token)
        return _expect(answer, 201).parse(IssuedCertificate)

    async def use_identity(self, ssl_context: ssl.SSLContext) -> None:
        """Present another client certificate from now on (after a renewal); calls
        already running finish on the old session, which is then closed."""
        old = self._http
        self._http = HttpsClient(
            self._base_url, ssl_context=ssl_context, timeout_s=self._timeout_s,
            trust=self._trust, service="the CA",
        )  # fmt: skip
        await old.close()

    async def renew(self, csr_pem: bytes) -> RenewedCertificate:
        """``POST /agents/renew`` over mutual TLS with the CURRENT certificate.

        Raises RenewalInProgress (with ``retry_after_s``), RenewalReplayed, CsrRefused,
        AgentGone and the other CaErrors, https errors.
        """
        answer = await self._http.call(
            "POST", "/agents/renew", json={"csr": csr_pem.decode("ascii")}, mutual=True
        )
        if answer.status == 200:
            return answer.parse(RenewedCertificate)
        error = ca_error(answer)
        if isinstance(error, RenewalInProgress):
            try:
                body = answer.json()
                error.retry_after_s = max(1.0, min(3600.0, float(body["retry_after_s"])))
            except (ProtocolError, KeyError, TypeError, ValueError):
                pass
        raise error

    async def bootstrap(self) -> BrokerGrant:
        """``POST /agents/bootstrap`` over mutual TLS: fresh broker credentials."""
        answer = await self._http.call(
            "POST", "/agents/bootstrap", json={"instance_id": self.instance_id}, mutual=True
        )
        return _expect(answer, 200).parse(BrokerGrant)

    async def heartbeat(self, status: str, detail: str = "") -> HeartbeatAnswer:
        """``POST /agents/heartbeat`` over mutual TLS with this agent's version."""
        answer = await self._http.call(
            "POST",
            "/agents/heartbeat",
            json={
                "version": self.version,
                "status": status,
                "detail": detail,
                "instance_id": self.instance_id,
            },
            mutual=True,
        )
        return _expect(answer, 200).parse(HeartbeatAnswer)

    async def self_view(self) -> AgentView:
        """``GET /agents/self`` over mutual TLS."""
        answer = await self._http.call("GET", "/agents/self", mutual=True)
        return _expect(answer, 200).parse(AgentView)

    async def sync_users(
        self, sync_id: str, users: list[dict[str, str]], *, final: bool
    ) -> SyncAnswer:
        """``POST /agents/sync`` over mutual TLS: one batch of a user sync (``agent.sync``).

        Raises DomainNotVerified, SyncConflict, InvalidRequest and the other CaErrors,
        https errors.
        """
        answer = await self._http.call(
            "POST",
            "/agents/sync",
            json={"sync_id": sync_id, "users": users, "final": final},
            mutual=True,
        )
        return _expect(answer, 200).parse(SyncAnswer)

    async def delete_agent(self, token: str, agent_id: str) -> None:
        """``DELETE /agents/{agent_id}`` with an admin bearer token (204).

        Raises AgentNotFound when the cloud has no such agent, other CaError, https errors.
        """
        answer = await self._http.call(
            "DELETE", f"/agents/{quote(agent_id, safe='')}", bearer=token
        )
        _expect(answer, 204)


def _expect(answer: Response, status: int) -> Response:
    if answer.status == status:
        return answer
    raise ca_error(answer)


def ca_error(answer: Response) -> CaError:
    """The typed error of a CA answer ``{"error", "message"}``; any other body gives a
    plain CaError with the HTTP status (a proxy or load balancer answered, say)."""
    try:
        body = answer.json()
    except ProtocolError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body["error"]
        message = body.get("message")
        cls = _BY_CODE.get(code, CaError)
        text = printable(message) if isinstance(message, str) else ""
        return cls(text, status=answer.status, code=printable(code))
    return CaError(
        f"{answer.url} answered HTTP {answer.status} without a CA error body: check that the "
        "URL points at the PTA CA.",
        status=answer.status,
    )
