"""Admin bearer tokens: the allow-list, every claim check, and the JWKS cache (no I/O)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.admin_tokens import (
    AdminTokenVerifier,
    JwksKeySource,
    StaticKeySource,
    parse_jwks,
)
from ca.errors import AdminNotFound, CaError, InsufficientRole, InvalidToken, StsUnavailable
from common.contracts import ADMIN_ROLE, CA_AUDIENCE

STS = "https://sts.example.test"
KID = "k1"
KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: Any, kid: str = KID, **extra: Any) -> dict[str, Any]:
    algorithm = (
        jwt.algorithms.ECAlgorithm
        if isinstance(key, ec.EllipticCurvePublicKey)
        else (jwt.algorithms.RSAAlgorithm)
    )
    return {**json.loads(algorithm.to_jwk(key)), "kid": kid, **extra}


JWKS = {"keys": [_jwk(KEY.public_key(), use="sig", alg="ES256")]}


def _token(tenant: str, *, key: Any = KEY, algorithm: str = "ES256", **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": f"{STS}/{tenant}/v2.0",
        "aud": CA_AUDIENCE,
        "tid": tenant,
        "oid": "11111111-2222-3333-4444-555555555555",
        "preferred_username": "admin@contoso.test",
        "roles": [ADMIN_ROLE],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    headers = {"kid": overrides.pop("kid", KID)}
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


ADMIN = "11111111-2222-3333-4444-555555555555"


class _Admins:
    """An AdminDirectory: every tenant exists but `missing`; ADMIN holds `roles`."""

    def __init__(self, *, missing: str = "", roles: tuple[str, ...] | None = (ADMIN_ROLE,)):
        self.missing = missing
        self.roles = roles

    async def tenant_exists(self, tenant_id: str) -> bool:
        return tenant_id != self.missing

    async def admin_roles(self, tenant_id: str, admin_id: str) -> tuple[str, ...] | None:
        return self.roles if admin_id == ADMIN else None


class _CountingKeys(StaticKeySource):
    def __init__(self) -> None:
        super().__init__(JWKS)
        self.asked: list[str] = []

    async def signing_key(self, tenant_id: str, kid: str) -> ec.EllipticCurvePublicKey | None:
        self.asked.append(tenant_id)
        return await super().signing_key(tenant_id, kid)


def _verifier(admins: _Admins | None = None) -> AdminTokenVerifier:
    return AdminTokenVerifier(StaticKeySource(JWKS), admins or _Admins(), sts_url=STS, leeway_s=30)


def _flip_signature(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[-1] ^= 0x80
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


async def test_a_valid_token_names_the_admin() -> None:
    tenant = str(uuid.uuid4())
    admin = await _verifier().verify(f"Bearer {_token(tenant)}")
    assert admin.tenant_id == tenant
    assert admin.object_id == "11111111-2222-3333-4444-555555555555"
    assert admin.username == "admin@contoso.test"


T = str(uuid.uuid4())
REFUSED: dict[str, tuple[str | None, type[CaError]]] = {
    "no header": (None, InvalidToken),
    "empty": ("", InvalidToken),
    "basic scheme": ("Basic YTpi", InvalidToken),
    "bearer without token": ("Bearer ", InvalidToken),
    "not a JWT": ("Bearer abc.def", InvalidToken),
    "too long": ("Bearer " + "a" * 9000, InvalidToken),
    "alg none": (f"Bearer {_token(T, key=None, algorithm='none')}", InvalidToken),
    "HS256": (f"Bearer {_token(T, key=b'x' * 32, algorithm='HS256')}", InvalidToken),
    "RS256": (
        "Bearer "
        + _token(
            T, key=rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256"
        ),
        InvalidToken,
    ),
    "ES256 by another key": (
        f"Bearer {_token(T, key=ec.generate_private_key(ec.SECP256R1()))}",
        InvalidToken,
    ),
    "tampered signature": (f"Bearer {_flip_signature(_token(T))}", InvalidToken),
    "unknown kid": (f"Bearer {_token(T, kid='k2')}", InvalidToken),
    "expired": (f"Bearer {_token(T, exp=int(time.time()) - 120)}", InvalidToken),
    "not yet valid": (f"Bearer {_token(T, nbf=int(time.time()) + 600)}", InvalidToken),
    "no exp": (f"Bearer {_token(T, exp=None)}", InvalidToken),
    "other audience": (f"Bearer {_token(T, aud='urn:pta:sts')}", InvalidToken),
    "no audience": (f"Bearer {_token(T, aud=None)}", InvalidToken),
    "other issuer": (f"Bearer {_token(T, iss='https://evil.test/' + T + '/v2.0')}", InvalidToken),
    "issuer of another tenant": (
        f"Bearer {_token(T, iss=f'{STS}/{uuid.uuid4()}/v2.0')}",
        InvalidToken,
    ),
    "tid not a UUID": (f"Bearer {_token(T, tid='contoso.test')}", InvalidToken),
    "tid uppercase": (f"Bearer {_token(T, tid=T.upper())}", InvalidToken),
    "no tid": (f"Bearer {_token(T, tid=None)}", InvalidToken),
    "no roles": (f"Bearer {_token(T, roles=None)}", InsufficientRole),
    "other role": (f"Bearer {_token(T, roles=['reader'])}", InsufficientRole),
    "roles not a list": (f"Bearer {_token(T, roles=ADMIN_ROLE)}", InsufficientRole),
    "oid not a UUID": (f"Bearer {_token(T, oid='admin')}", InvalidToken),
    "no oid": (f"Bearer {_token(T, oid=None)}", InvalidToken),
    "an admin that no longer exists": (f"Bearer {_token(T, oid=str(uuid.uuid4()))}", AdminNotFound),
}


@pytest.mark.parametrize("name", list(REFUSED))
async def test_refused(name: str) -> None:
    header, error = REFUSED[name]
    with pytest.raises(error) as caught:
        await _verifier().verify(header)
    assert type(caught.value) is error


async def test_an_unknown_tenant_is_refused_before_any_key_lookup() -> None:
    keys = _CountingKeys()
    verifier = AdminTokenVerifier(keys, _Admins(missing=T), sts_url=STS, leeway_s=30)
    with pytest.raises(InvalidToken):
        await verifier.verify(f"Bearer {_token(T)}")
    assert keys.asked == []


async def test_an_admin_whose_role_was_removed_is_refused() -> None:
    with pytest.raises(InsufficientRole) as caught:
        await _verifier(_Admins(roles=("reader",))).verify(f"Bearer {_token(T)}")
    assert "no longer" in caught.value.message


async def test_leeway_accepts_a_token_just_expired() -> None:
    token = _token(T, exp=int(time.time()) - 10)
    assert (await _verifier().verify(f"Bearer {token}")).tenant_id == T


def test_parse_jwks_keeps_only_es256_public_keys() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaked = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private))  # has "d"
    document = {
        "keys": [
            _jwk(KEY.public_key(), "good"),
            _jwk(p384.public_key(), "p384"),
            _jwk(rsa_key.public_key(), "rsa"),
            {**leaked, "kid": "private"},
            _jwk(KEY.public_key(), "enc", use="enc"),
            _jwk(KEY.public_key(), "es384", alg="ES384"),
            {"kid": "broken", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            "not an object",
        ]
    }
    assert list(parse_jwks(document)) == ["good"]
    with pytest.raises(ValueError):
        parse_jwks({"nokeys": []})


# -- the JWKS fetcher, against a fake HTTP session ---------------------------------------------


class _Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self._body = body
        self.content = self

    async def read(self, n: int = -1) -> bytes:
        return self._body if n < 0 else self._body[:n]


class _Session:
    def __init__(self, answers: dict[str, tuple[int, bytes]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    @asynccontextmanager
    async def get(self, url: str, **kwargs: Any) -> AsyncIterator[_Response]:
        assert kwargs["ssl"] is not None and kwargs["allow_redirects"] is False
        self.calls.append(url)
        yield _Response(*self.answers.get(url, (404, b"")))


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _source(session: _Session, clock: _Clock) -> JwksKeySource:
    import ssl

    return JwksKeySource(
        sts_url=STS + "/",
        session=session,  # type: ignore[arg-type]
        ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
        timeout_s=1,
        refresh_min_interval_s=60,
        clock=clock,
    )


async def test_jwks_is_fetched_lazily_and_cached_for_every_tenant() -> None:
    url = f"{STS}/{T}/discovery/v2.0/keys"
    session, clock = _Session({url: (200, json.dumps(JWKS).encode())}), _Clock()
    source = _source(session, clock)
    assert session.calls == []
    assert await source.signing_key(T, KID) is not None
    assert await source.signing_key(T, KID) is not None
    # The STS's keys are the same for every tenant: one cache, nothing to evict.
    assert await source.signing_key(str(uuid.uuid4()), KID) is not None
    assert session.calls == [url]


async def test_a_404_keeps_the_known_keys() -> None:
    url = f"{STS}/{T}/discovery/v2.0/keys"
    session, clock = _Session({url: (200, json.dumps(JWKS).encode())}), _Clock()
    source = _source(session, clock)
    assert await source.signing_key(T, KID) is not None
    clock.now += 61
    assert await source.signing_key(str(uuid.uuid4()), "other") is None  # answered 404
    assert await source.signing_key(T, KID) is not None
    assert len(session.calls) == 2


async def test_unknown_kids_refetch_at_most_once_per_interval() -> None:
    url = f"{STS}/{T}/discovery/v2.0/keys"
    session, clock = _Session({url: (200, json.dumps(JWKS).encode())}), _Clock()
    source = _source(session, clock)
    for _ in range(5):
        assert await source.signing_key(T, "rotated") is None
    assert len(session.calls) == 1
    # The STS rotates its key; after the interval the new kid is found.
    session.answers[url] = (200, json.dumps({"keys": [_jwk(KEY.public_key(), "rotated")]}).encode())
    clock.now += 61
    assert await source.signing_key(T, "rotated") is not None
    assert len(session.calls) == 2


async def test_unknown_tenant_has_no_keys() -> None:
    source = _source(_Session({}), _Clock())
    assert await source.signing_key(T, KID) is None


@pytest.mark.parametrize(
    "answer", [(500, b"oops"), (200, b"not json"), (200, b'{"keys": 3}'), (302, b"")]
)
async def test_sts_faults_are_unavailable_not_invalid(answer: tuple[int, bytes]) -> None:
    url = f"{STS}/{T}/discovery/v2.0/keys"
    source = _source(_Session({url: answer}), _Clock())
    with pytest.raises(StsUnavailable):
        await source.signing_key(T, KID)
