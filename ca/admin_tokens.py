"""Admin bearer tokens: who may register, list and delete agents (docs/design.md §3.1 step 4).

A token passes only if all of these hold, in this order (docs/architecture.md
"Identities and tokens"):
- it is a compact JWS with ``alg`` ES256: the allow-list is explicit and has one entry, so
  ``none``, HMAC (the public-key-as-secret confusion) and RSA tokens never reach a key;
- its ``tid`` is a canonical tenant UUID of a tenant that exists (``AdminDirectory``),
  checked before any key is looked up: a made-up ``tid`` costs one indexed query, never a
  fetch from the STS (otherwise 401 ``invalid_token``);
- its signature verifies with a key of the STS JWKS chosen by ``kid``;
- ``iss`` is ``{sts_url}/{tid}/v2.0``, ``aud`` is ``urn:pta:ca``, ``exp`` is in the future
  and ``nbf`` (when present) in the past, both with a small leeway for clock skew;
- ``roles`` contains ``hybrid_identity_admin`` (otherwise 403 ``insufficient_role``);
- the admin (``oid``) still exists in that tenant (otherwise 401 ``admin_not_found``) and
  still holds ``hybrid_identity_admin`` (otherwise 403 ``insufficient_role``): a token is
  valid for an hour, and an admin deleted or demoted meanwhile must lose access at once.

Keys come from a ``KeySource``: ``JwksKeySource`` fetches the STS JWKS lazily over TLS
verified against the STS CA bundle only. The STS signs every tenant's tokens with the
same keys, so there is one cache for all tenants (fetched from the URL of the tenant that
asked, ``{sts_url}/{tid}/discovery/v2.0/keys``): no tenant can evict another's keys. It is
refetched on an unknown ``kid`` at most once per ``refresh_min_interval_s`` (so garbage
kids cannot make the CA hammer the STS); ``StaticKeySource`` serves a fixed JWKS (tests,
offline set-ups). Only EC P-256 signing keys are taken from a JWKS; other entries are
ignored.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from ca.errors import AdminNotFound, InsufficientRole, InvalidToken, StsUnavailable
from common.contracts import ADMIN_ROLE, CA_AUDIENCE
from common.encoding import is_canonical_uuid

ALGORITHMS: Final = ("ES256",)
"""The only JWS algorithm accepted (docs/contributing.md §3: explicit allow-list)."""

MAX_TOKEN_CHARS: Final = 8192
_MAX_JWKS_BYTES: Final = 256 * 1024
_MAX_CONCURRENT_FETCHES: Final = 4


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """The tenant admin a verified token speaks for."""

    tenant_id: str
    object_id: str
    username: str


class AdminDirectory(Protocol):
    """The tenants and admins as they are now (``ca.queries.DatabaseAdmins``)."""

    async def tenant_exists(self, tenant_id: str) -> bool: ...

    async def admin_roles(self, tenant_id: str, admin_id: str) -> tuple[str, ...] | None:
        """The admin's current roles, None when the tenant has no such admin."""
        ...


class KeySource(Protocol):
    """Where the STS token-signing public keys come from."""

    async def signing_key(self, tenant_id: str, kid: str) -> ec.EllipticCurvePublicKey | None:
        """The key with this ``kid`` for this tenant, or None when the STS has none.

        Raises StsUnavailable when the keys could not be fetched.
        """
        ...


def parse_jwks(document: object) -> dict[str, ec.EllipticCurvePublicKey]:
    """The ES256 signing keys of a JWKS document, by ``kid``; other entries are skipped.

    Raises ValueError when the document is not a JWKS object.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS is an object with a 'keys' array")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, Mapping):
            continue
        kid = entry.get("kid")
        if (
            not isinstance(kid, str)
            or entry.get("kty") != "EC"
            or entry.get("crv") != "P-256"
            or entry.get("alg", "ES256") != "ES256"
            or entry.get("use", "sig") != "sig"
            or "d" in entry  # a private key published by mistake is not trusted either
        ):
            continue
        try:
            key = jwt.PyJWK(dict(entry), algorithm="ES256").key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            keys[kid] = key
    return keys


class StaticKeySource:
    """A fixed JWKS, valid for every tenant (tests and offline deployments)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = parse_jwks(jwks)

    async def signing_key(self, tenant_id: str, kid: str) -> ec.EllipticCurvePublicKey | None:
        return self._keys.get(kid)


class JwksKeySource:
    """The STS JWKS (one for every tenant), fetched lazily over verified TLS and cached."""

    def __init__(
        self,
        *,
        sts_url: str,
        session: aiohttp.ClientSession,
        ssl_context: ssl.SSLContext,
        timeout_s: float,
        refresh_min_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sts_url = sts_url.rstrip("/")
        self._session = session
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._min_interval_s = refresh_min_interval_s
        self._clock = clock
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._fetches = asyncio.Semaphore(_MAX_CONCURRENT_FETCHES)
        self.fetches = 0

    def jwks_url(self, tenant_id: str) -> str:
        return f"{self._sts_url}/{tenant_id}/discovery/v2.0/keys"

    async def signing_key(self, tenant_id: str, kid: str) -> ec.EllipticCurvePublicKey | None:
        """The key; `tenant_id` (a tenant that exists) only names the URL it is fetched from."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            # Another request may have refreshed while this one waited for the lock.
            if kid not in self._keys and self._clock() - self._fetched_at >= self._min_interval_s:
                keys = await self._fetch(tenant_id)
                self._fetched_at = self._clock()
                if keys:  # a 404 (the STS does not know the tenant) keeps the known keys
                    self._keys = keys
        return self._keys.get(kid)

    async def _fetch(self, tenant_id: str) -> dict[str, ec.EllipticCurvePublicKey]:
        url = self.jwks_url(tenant_id)
        self.fetches += 1
        try:
            async with self._fetches, asyncio.timeout(self._timeout_s):
                async with self._session.get(url, ssl=self._ssl, allow_redirects=False) as resp:
                    if resp.status == 404:
                        return {}  # the STS does not know this tenant: no key verifies
                    if resp.status != 200:
                        raise StsUnavailable(detail=f"JWKS answered {resp.status}")
                    body = await resp.content.read(_MAX_JWKS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise StsUnavailable(detail=f"JWKS fetch: {type(exc).__name__}") from exc
        if len(body) > _MAX_JWKS_BYTES:
            raise StsUnavailable(detail="JWKS larger than expected")
        try:
            return parse_jwks(orjson.loads(body))
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise StsUnavailable(detail="JWKS does not parse") from exc


class AdminTokenVerifier:
    """Checks admin bearer tokens (see the module docstring for every rule)."""

    def __init__(
        self, key_source: KeySource, admins: AdminDirectory, *, sts_url: str, leeway_s: int
    ) -> None:
        self._keys = key_source
        self._admins = admins
        self._sts_url = sts_url.rstrip("/")
        self._leeway_s = leeway_s

    def issuer(self, tenant_id: str) -> str:
        return f"{self._sts_url}/{tenant_id}/v2.0"

    async def verify(self, authorization: str | None) -> AdminPrincipal:
        """Verify an ``Authorization`` header value and return the admin it names.

        Raises InvalidToken or AdminNotFound (401), InsufficientRole (403), StsUnavailable
        (503).
        """
        token = _bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken("The bearer token is not a well-formed JWT.") from exc
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken("The bearer token must be signed with ES256.")
        kid = header.get("kid")
        tenant_id = unverified.get("tid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise InvalidToken("The bearer token has no key id.")
        if not isinstance(tenant_id, str) or not is_canonical_uuid(tenant_id):
            raise InvalidToken("The bearer token has no valid tenant id (tid).")
        if not await self._admins.tenant_exists(tenant_id):
            raise InvalidToken("The token's tenant is not known to this CA.")
        key = await self._keys.signing_key(tenant_id, kid)
        if key is None:
            raise InvalidToken("The bearer token is not signed by a current STS key.")
        claims = self._decode(token, key, tenant_id)
        roles = claims.get("roles")
        if not isinstance(roles, list) or ADMIN_ROLE not in roles:
            raise InsufficientRole()
        object_id = claims.get("oid")
        if not isinstance(object_id, str) or not is_canonical_uuid(object_id):
            raise InvalidToken("The bearer token has no valid object id (oid).")
        current_roles = await self._admins.admin_roles(tenant_id, object_id)
        if current_roles is None:
            raise AdminNotFound()
        if ADMIN_ROLE not in current_roles:
            raise InsufficientRole(
                f"The signed-in account no longer holds the {ADMIN_ROLE} role of its tenant."
            )
        username = claims.get("preferred_username", "")
        return AdminPrincipal(
            tenant_id=tenant_id,
            object_id=object_id,
            username=username if isinstance(username, str) else "",
        )

    def _decode(self, token: str, key: ec.EllipticCurvePublicKey, tenant_id: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=CA_AUDIENCE,
                issuer=self.issuer(tenant_id),
                leeway=self._leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("The bearer token has expired; sign in again.") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("The bearer token is not valid yet; check the clock.") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken(f"The bearer token is not for {CA_AUDIENCE}.") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("The bearer token was not issued by this STS.") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("The bearer token's signature does not verify.") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken() from exc
        return claims


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise InvalidToken("Send 'Authorization: Bearer <token>'.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("Send 'Authorization: Bearer <token>'.")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("The bearer token is too long.")
    return token
