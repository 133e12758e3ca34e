"""Reading `application/x-www-form-urlencoded` bodies at the edge, strictly.

Every OAuth endpoint and the device login page read their input here, with a per-field
length limit, before anything else looks at it (docs/contributing.md: validate at the edge):
- the body must be form-encoded UTF-8 (the app's `client_max_size` bounds its size: 413);
- at most `MAX_FIELDS` fields; unknown fields are ignored (RFC 6749 section 3.2);
- a known field sent twice is refused (RFC 6749 section 3.2), as is a value over its limit
  or one with control characters (a password may hold anything but NUL);
- an empty value counts as absent (RFC 6749 section 3.1).
Errors are `InvalidParameter` (AADSTS90100); `Form.require` raises `MissingParameter`
(AADSTS900144). No error message quotes a value: a value may be a password.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from aiohttp import web

from common.wire import MAX_USERNAME_CHARS
from sts.errors import InvalidParameter, MissingParameter

MAX_FIELDS: Final = 64
FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"

# Field limits shared by the endpoints. Passwords: Entra's limit is 256 characters.
GRANT_TYPE_MAX: Final = 128
CLIENT_ID_MAX: Final = 128
SCOPE_MAX: Final = 2048
USERNAME_MAX: Final = MAX_USERNAME_CHARS  # one limit from the STS to the agent (common.wire)
PASSWORD_MAX: Final = 256
DEVICE_CODE_MAX: Final = 128
SHORT_MAX: Final = 64

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Form:
    """The known, non-empty fields of a request body."""

    values: Mapping[str, str]

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def require(self, name: str) -> str:
        """The field's value; raises MissingParameter (AADSTS900144) when absent or empty."""
        value = self.values.get(name)
        if value is None:
            raise MissingParameter(name)
        return value


def parse_form(body: bytes, limits: Mapping[str, int], *, secret_fields: frozenset[str]) -> Form:
    """Parse a form body, keeping only the fields named in `limits`.

    `secret_fields` may contain any character but NUL; other fields no control character.
    Raises InvalidParameter for a malformed body, a repeated known field, a value over its
    limit or with a forbidden character.
    """
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidParameter(
            f"The request body is not valid form encoding (UTF-8, at most {MAX_FIELDS} fields)."
        ) from exc
    values: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        limit = limits.get(name)
        if limit is None:
            continue
        if name in seen:
            raise InvalidParameter(f"The parameter '{name}' was sent more than once.")
        seen.add(name)
        if len(value) > limit:
            raise InvalidParameter(f"The value of '{name}' is too long (at most {limit}).")
        is_bad = "\x00" in value if name in secret_fields else bool(_CONTROL.search(value))
        if is_bad:
            raise InvalidParameter(f"The value of '{name}' contains a control character.")
        if value:
            values[name] = value
    return Form(values)


async def read_form(
    request: web.Request,
    limits: Mapping[str, int],
    *,
    secret_fields: frozenset[str] = frozenset(),
) -> Form:
    """Read and parse the request's form body; see `parse_form` for the rules.

    Raises InvalidParameter when the content type is not form-encoded; aiohttp raises 413
    for a body over `client_max_size`.
    """
    if request.content_type != FORM_CONTENT_TYPE:
        raise InvalidParameter(f"The request body must be {FORM_CONTENT_TYPE}.")
    return parse_form(await request.read(), limits, secret_fields=secret_fields)
