"""HTTPS to the cloud (CA and STS): pinned TLS, a timeout on every call, errors explained.

What: ``HttpsClient``, a thin aiohttp session bound to one base URL and one SSL context
(built by ``common.tls.client_context`` from the service TLS CA bundle, plus the agent's
certificate for mutual TLS), and the translation of transport failures into
``AgentError`` subclasses whose message says what to do. ``cloud`` and ``signin`` build on
it; they take a base URL and an SSL context, so tests point them at in-process servers.

Choices:
- Redirects are not followed: a redirect could carry a bearer token or a client
  certificate to another host, and neither service redirects API calls.
- Proxy variables are not read (``trust_env=False``): nothing below ``main`` reads the
  environment (docs/contributing.md §4); proxy support would be an explicit setting.
- TLS verification failures name the bundle that was used, since the usual cause is a
  bundle that does not belong to the server (docs/design.md: the agent pins its bundle).
- No TLS transport outlives ``close``: pooled connections are aborted by the connector's
  close, and on Pythons whose asyncio can leak a closing TLS transport (fixed by
  python/cpython#118960 in 3.12.7) ``enable_cleanup_closed`` makes the connector track the
  connections it closed itself (a request cancelled mid-flight, say) and abort them at
  ``close`` too. Otherwise such a transport finishes its TLS shutdown after the event
  loop has closed, and uvloop logs "Fatal error on SSL protocol ... unable to perform
  operation on <TCPTransport closed=True>" when the daemon stops.
"""

from __future__ import annotations

import re
import ssl
import sys
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from agent import __version__
from agent.errors import AgentError

# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) grouped by what the operator does.
_UNKNOWN_ISSUER = {2, 18, 19, 20, 21}
_EXPIRED, _NOT_YET_VALID = 10, 9
_NAME_MISMATCH = {62, 63, 64}  # host name, e-mail, IP address mismatch
_REVOKED = 23  # X509_V_ERR_CERT_REVOKED: listed on the service CRL (agent.service_crl)
_M = TypeVar("_M", bound=BaseModel)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_SHOWN_CHARS = 400
# aiohttp's own test for the CPython TLS transport leak (it warns when asked needlessly).
_NEEDS_CLEANUP_CLOSED = sys.version_info < (3, 12, 7) or (
    (3, 13, 0) <= sys.version_info < (3, 13, 1)
)


class Unreachable(AgentError):
    """The service could not be reached: check the URL, name resolution, and that this
    host may open outbound HTTPS connections to it (firewall, proxy)."""


class TimedOut(Unreachable):
    """The service did not answer in time: check that it is up and the network path to
    it, then try again (the limit is PTA_AGENT_HTTP_TIMEOUT_S)."""


class ServerNotTrusted(AgentError):
    """The server's TLS certificate was refused, so nothing was sent to it."""


class ClientCertificateRefused(AgentError):
    """The CA refused this agent's client certificate during the TLS handshake: it has
    expired, or was issued by another PTA CA. Check `pta-agent status`; an agent whose
    certificate expired must be registered again (`pta-agent register --force`)."""


class CertificateProbablyRefused(Unreachable):
    """The CA closed the connection without answering. Over mutual TLS this is how a
    refused client certificate usually shows (TLS 1.3 servers often close without an
    alert): check `pta-agent status` for the certificate's expiry; an agent whose
    certificate expired or was issued by another PTA CA must be registered again. If the
    certificate is valid, the CA may be restarting: try again."""


class ProtocolError(AgentError):
    """The service answered with something this agent does not understand: check that the
    URL points at the right service and that agent and service versions match."""


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer, read in full."""

    status: int
    body: bytes
    url: str

    def json(self) -> Any:
        """The body as JSON. Raises ProtocolError when it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"{self.url} answered HTTP {self.status} without JSON.") from exc

    def parse(self, model: type[_M]) -> _M:
        """The body as ``model``. Raises ProtocolError naming the bad fields (not values:
        a field may hold a secret such as a broker access key)."""
        try:
            return model.model_validate(self.json())
        except ValidationError as exc:
            fields = ", ".join(
                ".".join(str(p) for p in e["loc"]) or "(body)"
                for e in exc.errors(include_url=False, include_input=False)
            )
            raise ProtocolError(f"{self.url} answered with missing or invalid {fields}.") from exc


class HttpsClient:
    """One aiohttp session to one service, pinned to an SSL context.

    ``trust`` describes the CA bundle behind ``ssl_context`` for error messages, e.g.
    "the CA bundle this agent was registered with (/var/lib/pta-agent/ca-bundle.pem)".
    Use as an async context manager, or call ``close``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext,
        timeout_s: float,
        trust: str,
        service: str,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.trust = trust
        self.service = service
        self.timeout_s = timeout_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=ssl_context, enable_cleanup_closed=_NEEDS_CLEANUP_CLOSED
            ),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers={"User-Agent": f"pta-agent/{__version__}"},
            trust_env=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session; returns once its TLS connections are shut down or aborted
        (see the module docstring), so the event loop may close right after."""
        await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        form: dict[str, str] | None = None,
        bearer: str | None = None,
        mutual: bool = False,
    ) -> Response:
        """Send one request to ``base_url + path`` and read the whole answer.

        ``mutual`` says the call authenticates with the client certificate (for the error
        message when the handshake fails). Raises Unreachable, TimedOut,
        ServerNotTrusted, ClientCertificateRefused.
        """
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
        if json is not None:
            kwargs["data"] = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        elif form is not None:
            kwargs["data"] = form
        try:
            async with self._session.request(method, url, **kwargs) as answer:
                body = await answer.read()
                return Response(status=answer.status, body=body, url=url)
        except TimeoutError as exc:
            raise TimedOut(
                f"{self.service} at {url}: no answer within {self.timeout_s:g} s."
            ) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ServerNotTrusted(self._explain_verify(exc.certificate_error, url)) from exc
        except aiohttp.ClientSSLError as exc:
            raise self._handshake_error(exc, url, mutual=mutual) from exc
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or str(exc.os_error)
            raise Unreachable(f"{self.service} at {self.base_url}: {reason}.") from exc
        except aiohttp.ClientError as exc:
            if mutual and _is_tls_alert(exc):
                raise ClientCertificateRefused(f"({_alert(exc)})") from exc
            if mutual and isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
                raise CertificateProbablyRefused(f"({self.service} at {url})") from exc
            raise Unreachable(f"{self.service} at {url}: {_describe(exc)}.") from exc

    def _explain_verify(self, error: Exception, url: str) -> str:
        code = getattr(error, "verify_code", None)
        reason = getattr(error, "verify_message", None) or str(error)
        host = self.base_url
        if code in _UNKNOWN_ISSUER:
            return (
                f"The certificate of {self.service} ({host}) is not signed by "
                f"{self.trust}. Check the URL; if the service's TLS CA changed, the agent "
                "must be registered again with the new bundle."
            )
        if code == _REVOKED:
            return (
                f"The certificate of {self.service} ({host}) is REVOKED: it is listed on "
                "the service CRL. Nothing was sent. Its operator must replace it; if this "
                "is unexpected, someone may be impersonating the service."
            )
        if code == _EXPIRED:
            return (
                f"The certificate of {self.service} ({host}) has expired: its operator "
                "must renew it (or this host's clock is wrong)."
            )
        if code == _NOT_YET_VALID:
            return (
                f"The certificate of {self.service} ({host}) is not valid yet: check this "
                "host's clock."
            )
        if code in _NAME_MISMATCH:
            return (
                f"The certificate of {self.service} is not valid for the name in {host}: "
                "use the host name or address its certificate was issued for."
            )
        return f"The certificate of {self.service} ({host}) failed verification: {reason}."

    def _handshake_error(
        self, exc: aiohttp.ClientSSLError, url: str, *, mutual: bool
    ) -> AgentError:
        if mutual and _is_tls_alert(exc):
            return ClientCertificateRefused(f"({_alert(exc)})")
        return Unreachable(
            f"{self.service} at {url}: the TLS handshake failed ({_alert(exc)}).",
        )


def _is_tls_alert(exc: BaseException) -> bool:
    """True when the peer ended the handshake with a TLS alert (a refused certificate).

    With TLS 1.3 the client learns that its certificate was refused only when it reads
    the first answer, so the alert may surface as a connection error, not a handshake one.
    """
    return "ALERT" in _alert(exc).upper()


def _alert(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and seen.reason:
            return str(seen.reason)
        seen = seen.__cause__ or seen.__context__
    return _describe(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def printable(text: str) -> str:
    """Server text made safe to show on a terminal: control characters (escape sequences)
    replaced, length bounded."""
    return _CONTROL.sub(" ", text).strip()[:_MAX_SHOWN_CHARS]
