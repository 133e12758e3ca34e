"""The one rule that turns a typed sign-in name into the name accounts are stored under.

Issue 8 finding 2: two different foldings (Python's `str.lower()` for a lockout key,
PostgreSQL's `lower()` for the lookup) let `admİn@…` find the admin `admin@…` under a
lockout key of its own. So a name is normalised once, here, by every path that reads a
typed name (STS sign-ins and the sync of users from the directory), and every lookup then
compares exactly:

- names are ASCII: a name with any other character is no account's name (Entra's
  userPrincipalName allows only ASCII too), so `canonical_username` answers None and
  the caller answers "no such user" without a lookup. No Unicode folding is needed, and
  none can disagree with another;
- ASCII letters are folded to lower case (`str.lower()` and PostgreSQL's `lower()` agree
  on ASCII);
- surrounding whitespace is not part of a name (the browser form strips it).
"""

from __future__ import annotations

from common.wire import MAX_USERNAME_CHARS


def canonical_username(typed: str) -> str | None:
    """The stored form of a typed sign-in name, or None when no account can have it."""
    name = typed.strip()
    if not name or len(name) > MAX_USERNAME_CHARS or not name.isascii() or not name.isprintable():
        return None
    return name.lower()
