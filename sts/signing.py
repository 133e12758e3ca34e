"""Token signing keys: loaded once at start, published as a JWKS, the newest one signs.

The keys are ES256 (ECDSA P-256, SHA-256) private keys in PEM files `*.pem` in the folder
named by `signing_key_dir`, mode 0600 (`common.pki.write_private_key` writes them so).
Every key in the folder is published in the JWKS; the newest by mtime (then by name)
signs. Rotation: drop a new key in the folder and restart the replicas one by one; relying
parties refresh their JWKS on an unknown kid, and old tokens still verify until the old
file is removed (remove it no sooner than one token lifetime later).

Keys are parsed once into key objects (docs/servers.md: parsing PEM per call costs
milliseconds). The kid is the RFC 7638 JWK thumbprint (SHA-256, base64url), so a kid
names exactly one public key whoever computes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from common import pki
from common.encoding import b64url
from sts.errors import StsError

ALGORITHM = "ES256"


class SigningKeyError(StsError):
    """The token signing keys cannot be used; check the PTA_STS_SIGNING_KEY_DIR setting."""

    def __init__(self, detail: str) -> None:
        default = (type(self).__doc__ or "").strip()
        super().__init__(f"{detail} {default}")


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The JWK members of a P-256 public key (RFC 7518 section 6.2.1), without kid."""
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 thumbprint of an EC JWK: SHA-256 of the required members, sorted, compact."""
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = orjson.dumps(required, option=orjson.OPT_SORT_KEYS)
    return b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One loaded key: its kid, the private key object and its public JWK."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey
    jwk: Mapping[str, str]

    @classmethod
    def from_private_key(cls, key: ec.EllipticCurvePrivateKey) -> SigningKey:
        """Wrap a P-256 key; raises SigningKeyError for another curve."""
        if not isinstance(key.curve, ec.SECP256R1):
            raise SigningKeyError(f"ES256 needs a P-256 key, not {key.curve.name}.")
        members = public_jwk(key.public_key())
        kid = jwk_thumbprint(members)
        return cls(kid, key, {**members, "kid": kid, "use": "sig", "alg": ALGORITHM})


class SigningKeys:
    """The key set of one STS process: `sign` with the newest, `jwks` lists them all."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        """`keys` oldest first; the last one signs. Raises SigningKeyError when empty."""
        if not keys:
            raise SigningKeyError("No signing key was given.")
        self._keys = tuple(keys)
        self._current = keys[-1]
        self._jwks = orjson.dumps({"keys": [dict(k.jwk) for k in self._keys]})

    @classmethod
    def load(cls, folder: Path) -> SigningKeys:
        """Read every `*.pem` in `folder` once.

        Raises SigningKeyError when the folder holds no key, a file is not a private
        P-256 key, or a file is readable by group or others.
        """
        paths = sorted(folder.glob("*.pem"), key=lambda p: (p.stat().st_mtime, p.name))
        if not paths:
            raise SigningKeyError(
                f"No *.pem key in {folder}. Create one with common.pki.new_ec_key and "
                "common.pki.write_private_key."
            )
        keys = []
        for path in paths:
            try:
                key = pki.read_private_key(path)
            except (pki.PkiError, OSError) as exc:
                raise SigningKeyError(f"Cannot use {path}: {exc}") from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise SigningKeyError(f"{path} is not an EC key; ES256 needs P-256.")
            keys.append(SigningKey.from_private_key(key))
        return cls(keys)

    @property
    def current_kid(self) -> str:
        """The kid of the key that signs."""
        return self._current.kid

    def jwks_json(self) -> bytes:
        """The JWKS document (RFC 7517 section 5), serialized once."""
        return self._jwks

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document as a dict."""
        return {"keys": [dict(k.jwk) for k in self._keys]}

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        """The public key published under `kid`, if any."""
        for key in self._keys:
            if key.kid == kid:
                return key.private_key.public_key()
        return None

    def sign(self, claims: Mapping[str, object]) -> str:
        """A compact JWS of `claims`, ES256 with the newest key, header `kid` and `typ`."""
        return jwt.encode(
            dict(claims),
            self._current.private_key,
            algorithm=ALGORITHM,
            headers={"kid": self._current.kid, "typ": "JWT"},
        )
