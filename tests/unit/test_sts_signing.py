"""ES256 signing keys: loading a folder, the JWKS, RFC 7638 kids, signing (sts.signing)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from common import pki
from sts.signing import SigningKey, SigningKeyError, SigningKeys, jwk_thumbprint


def write_key(folder: Path, name: str, mtime: float, key: pki.PrivateKey | None = None) -> Path:
    path = folder / name
    pki.write_private_key(path, key if key is not None else pki.new_ec_key())
    os.utime(path, (mtime, mtime))
    return path


def test_all_keys_are_published_and_the_newest_signs(tmp_path: Path) -> None:
    write_key(tmp_path, "b-old.pem", 1_000)
    write_key(tmp_path, "a-new.pem", 2_000)
    (tmp_path / "notes.txt").write_text("ignored")
    keys = SigningKeys.load(tmp_path)
    published = keys.jwks()["keys"]
    assert len(published) == 2
    assert all(set(k) == {"kty", "crv", "x", "y", "kid", "use", "alg"} for k in published)
    assert published[-1]["kid"] == keys.current_kid
    assert json.loads(keys.jwks_json()) == keys.jwks()

    token = keys.sign({"sub": "s", "aud": "a"})
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": keys.current_kid, "typ": "JWT"}
    public = jwt.PyJWK(published[-1]).key
    assert jwt.decode(token, public, algorithms=["ES256"], audience="a")["sub"] == "s"
    older = jwt.PyJWK(published[0]).key
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, older, algorithms=["ES256"], audience="a")


def test_kid_is_the_rfc7638_thumbprint() -> None:
    key = SigningKey.from_private_key(pki.new_ec_key())
    members = {name: key.jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=")
    assert key.kid == expected.decode() == jwk_thumbprint(key.jwk)


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="PTA_STS_SIGNING_KEY_DIR"):
        SigningKeys.load(tmp_path)


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = write_key(tmp_path, "k.pem", 1_000)
    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="mode 0644"):
        SigningKeys.load(tmp_path)


@pytest.mark.parametrize(
    "key", [pki.new_rsa_key(), ec.generate_private_key(ec.SECP384R1())], ids=["rsa", "p384"]
)
def test_other_key_types_are_refused(tmp_path: Path, key: pki.PrivateKey) -> None:
    write_key(tmp_path, "k.pem", 1_000, key)
    with pytest.raises(SigningKeyError):
        SigningKeys.load(tmp_path)


def test_garbage_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n")
    path.chmod(0o600)
    with pytest.raises(SigningKeyError) as caught:
        SigningKeys.load(tmp_path)
    assert "c2VjcmV0" not in str(caught.value)
