"""The CA's errors: each class names one event and carries its HTTP status and wire code.

Handlers raise; one middleware (``ca.app``) renders ``{"error": code, "message": ...}``
(docs/architecture.md "CA HTTP API"). The class docstring is the default message and says
what to do about it (docs/contributing.md §5). Messages never carry a token, key or secret.

Codes beyond the contract's list, for cases it does not cover: ``admin_not_found`` (401,
the token's admin was deleted since it was issued), ``sts_unavailable`` (503, the STS
signing keys could not be fetched), ``not_found`` / ``method_not_allowed`` (aiohttp
routing) and ``server_error`` (500, an unexpected fault; details only in the log).
"""

from __future__ import annotations

from typing import ClassVar


class CaError(Exception):
    """The certificate authority could not complete the request."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "server_error"

    def __init__(self, message: str | None = None, *, detail: str = "") -> None:
        default = " ".join((type(self).__doc__ or type(self).__name__).split())
        self.message = message if message else default
        # For the log only: what an operator needs and a client should not see.
        self.detail = detail
        super().__init__(f"{self.message} ({detail})" if detail else self.message)


class InvalidRequest(CaError):
    """The request is malformed; send a JSON object with the documented fields."""

    status = 400
    code = "invalid_request"


class RequestTooLarge(InvalidRequest):
    """The request body is too large."""

    status = 413


class CsrRejected(CaError):
    """The certificate signing request was rejected; send a PEM CSR for a fresh RSA key."""

    status = 400
    code = "csr_rejected"


class InvalidToken(CaError):
    """The bearer token is missing, malformed, expired or not signed by the STS; sign in
    again for scope urn:pta:ca/.default."""

    status = 401
    code = "invalid_token"


class AdminNotFound(CaError):
    """The admin this bearer token was issued to no longer exists in its tenant; sign in
    again with a current admin account."""

    status = 401
    code = "admin_not_found"


class InsufficientRole(CaError):
    """The signed-in account lacks the hybrid_identity_admin role of its tenant."""

    status = 403
    code = "insufficient_role"


class TenantMismatch(CaError):
    """The tenant_id in the request is not the tenant of the bearer token; sign in to
    that tenant."""

    status = 403
    code = "tenant_mismatch"


class AgentLimitReached(CaError):
    """The tenant already has the maximum number of registered agents; delete an unused
    agent (DELETE /agents/{id}) before registering another."""

    status = 409
    code = "agent_limit_reached"


class ClientCertificateRequired(CaError):
    """This endpoint needs mutual TLS with the agent certificate issued at registration."""

    status = 401
    code = "client_certificate_required"


class ClientCertificateExpired(ClientCertificateRequired):
    """The agent certificate has expired; register the agent again."""


class CertificateRevoked(CaError):
    """The agent certificate has been revoked; register the agent again."""

    status = 401
    code = "certificate_revoked"


class CertificateSuperseded(CaError):
    """The agent certificate has been replaced by a newer one; use the current certificate."""

    status = 401
    code = "certificate_superseded"


class AgentNotFound(CaError):
    """No such agent in this tenant."""

    status = 404
    code = "agent_not_found"


class AgentUnknown(AgentNotFound):
    """The agent of this certificate is no longer registered; register it again."""

    status = 401


class BrokerUnavailable(CaError):
    """The message broker could not be reached; try again shortly."""

    status = 503
    code = "broker_unavailable"


class StsUnavailable(CaError):
    """The STS signing keys could not be fetched; try again shortly."""

    status = 503
    code = "sts_unavailable"


class ConfigurationError(CaError):
    """A CA setting is unusable; fix the named setting and restart."""


class CertificateExpired(CaError):
    """The agent certificate expired, so the agent was deleted from its tenant; register
    the agent again (`pta-agent register --force`)."""

    status = 401
    code = "certificate_expired"


class RenewalInProgress(CaError):
    """Another agent of this tenant is renewing its certificate; try again after
    retry_after_s seconds."""

    status = 409
    code = "renewal_in_progress"

    def __init__(self, message: str | None = None, *, retry_after_s: int, detail: str = "") -> None:
        super().__init__(message, detail=detail)
        self.retry_after_s = retry_after_s


class RenewalNotDue(CaError):
    """This certificate is not due for renewal yet (renewal opens renew_before_days before
    it expires); the agent's heartbeat says when."""

    status = 409
    code = "renewal_not_due"


class RenewalReplayed(CaError):
    """The key of this certificate request was already used by an agent; generate a new
    key pair and renew again."""

    status = 409
    code = "renewal_replayed"
