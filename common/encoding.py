"""Byte encodings used on more than one wire: unpadded base64url (RFC 4648 section 5,
as JOSE, PKCE and the agent key id use it, RFC 7515 section 2) and canonical UUID text."""

from __future__ import annotations

import base64
import uuid


def b64url(data: bytes) -> str:
    """Unpadded base64url of ``data`` (RFC 7515 section 2, "Base64url Encoding")."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def is_canonical_uuid(value: object) -> bool:
    """True only for the lowercase hyphenated form ``str(uuid.UUID(...))`` prints.

    Ids on our wires, in paths and in certificate names have one spelling, so a braced,
    upper-case or hyphen-less variant cannot name the same row twice in a cache or a log.
    """
    try:
        return str(uuid.UUID(value)) == value  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError):
        return False
