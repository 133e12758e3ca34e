"""Proof Key for Code Exchange (RFC 7636), S256 only: pure functions, no I/O.

The authorize endpoint stores the client's `code_challenge`; the token endpoint checks
that `BASE64URL(SHA256(ASCII(code_verifier)))` equals it (section 4.6), compared in
constant time (docs/contributing.md §3). The `plain` method is refused: it protects nothing
once the authorization request is observed (OAuth 2.0 Security BCP, section 2.1.1).

- A verifier is 43 to 128 characters of the unreserved set `[A-Za-z0-9-._~]`
  (section 4.1).
- An S256 challenge is the unpadded base64url encoding of 32 bytes: 43 characters whose
  last one carries 4 bits (section 4.2). Anything else cannot be the hash of a verifier.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Final

from common.encoding import b64url

S256: Final = "S256"
VERIFIER_MIN: Final = 43
VERIFIER_MAX: Final = 128
CHALLENGE_LENGTH: Final = 43

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")


def is_valid_verifier(verifier: str) -> bool:
    """True when `verifier` has the length and alphabet RFC 7636 section 4.1 requires."""
    return _VERIFIER.fullmatch(verifier) is not None


def is_valid_challenge(challenge: str) -> bool:
    """True when `challenge` is the canonical unpadded base64url encoding of 32 bytes."""
    if _CHALLENGE.fullmatch(challenge) is None:
        return False
    try:
        raw = base64.urlsafe_b64decode(challenge + "=")
    except (binascii.Error, ValueError):
        return False
    # The last character has 2 unused bits; only one spelling of 32 bytes is canonical.
    return len(raw) == 32 and b64url(raw) == challenge


def s256(verifier: str) -> str:
    """The S256 challenge of `verifier`: BASE64URL(SHA256(ASCII(verifier)))."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def matches(verifier: str, challenge: str) -> bool:
    """True when `verifier` is valid and its S256 challenge is `challenge` (constant time)."""
    if not is_valid_verifier(verifier):
        return False
    return hmac.compare_digest(s256(verifier).encode("ascii"), challenge.encode("utf-8"))
