"""User names: the one rule that turns a typed sign-in name into the name accounts are
stored under, and the shape a name must have before a log may show it.

Two different foldings (Python's `str.lower()` for a lockout key, PostgreSQL's `lower()`
for the lookup) would let `admİn@…` find the admin `admin@…` under a lockout key of its
own. So a name is normalised once, here, by every path that reads a typed name (STS
sign-ins and the sync of users from the directory), and every lookup then compares
exactly:

- names are ASCII: a name with any other character is no account's name (Entra's
  userPrincipalName allows only ASCII too), so `canonical_username` answers None and
  the caller answers "no such user" without a lookup. No Unicode folding is needed, and
  none can disagree with another;
- ASCII letters are folded to lower case (`str.lower()` and PostgreSQL's `lower()` agree
  on ASCII);
- surrounding whitespace is not part of a name (the browser form strips it).

`is_user_name` is stricter: a `local@domain` shape. A username field may hold a password
typed into the wrong field; logs and the sign-in log show a typed name only when it has
this shape (`common.logs.mask_typed_usernames`).
"""

from __future__ import annotations

import re
from typing import Final

from common.wire import MAX_USERNAME_CHARS

MAX_USER_NAME_CHARS: Final = 256
# RFC 5321 dot-atom local part (the characters Entra allows in a UPN's local part) and a
# DNS domain of at least two labels; ASCII only: a password has no such shape unless it
# is an address itself.
_USER_NAME = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)


def canonical_username(typed: str) -> str | None:
    """The stored form of a typed sign-in name, or None when no account can have it."""
    name = typed.strip()
    if not name or len(name) > MAX_USERNAME_CHARS or not name.isascii() or not name.isprintable():
        return None
    return name.lower()


def is_user_name(value: str) -> bool:
    """True when `value` is shaped like a user name (`local@domain`, ASCII, <= 256 chars)."""
    return len(value) <= MAX_USER_NAME_CHARS and _USER_NAME.fullmatch(value) is not None
