"""User sync: tell the cloud who may sign in, read from the on-premises directory.

docs/design.md §3.3 needs the cloud to know a tenant's users (the STS answers AADSTS50034
for a username it does not know, without asking any agent) but never their passwords.
``pta-agent sync`` and the periodic sync inside ``pta-agent run`` do this in two steps:

1. ``UserSource.read``: as the service account, a paged subtree search (RFC 2696, ldap3
   ``paged_search``, ``get_info=NONE``) under ``base_dn`` for the user object class with
   the login attribute present, in a worker thread on a connection of its own (the
   sign-in pool is not touched). Each entry becomes a ``DirectoryUser`` (``map_entry``):
   - username, lowercased: ``uid`` -> ``<uid>@<domain>``; ``mail`` -> the mail value;
     ``userPrincipalName`` -> that value. It must be a username the sign-in path accepts
     (``ldap_verdicts.login_value``: ``local@<the configured domain>``, at most 256
     characters, no spaces or control characters), else the entry is skipped;
   - immutable id: ``entryUUID`` (OpenLDAP) or ``objectGUID`` (AD, the 16 little-endian
     GUID bytes), both as the canonical lowercase UUID string; skipped when absent;
   - display name: ``displayName``, else ``cn``, else empty; control characters become
     spaces, cut at 256 characters.
   Two entries with one username are both skipped: the directory could not validate
   either (``invalid_username``), and the cloud must not pick one. A page the directory
   refuses (size or time limit, an error) fails the whole read: a partial list must never
   reach a ``final`` batch, which would delete the missing users in the cloud.
2. ``push``: ``POST /agents/sync`` over mutual TLS in batches of at most
   ``MAX_BATCH_USERS`` users and ``MAX_BATCH_BYTES`` of JSON, one ``sync_id`` (uuid4) per
   run; the last batch says ``final: true`` and the CA then deletes the tenant's users this
   sync did not send. An empty read is refused (``NoUsersFound``) instead of being sent,
   since it would delete every synced user of the tenant (a wrong base DN looks exactly
   like that).

The CA side is ``ca/sync.py``; its refusals come back as ``agent.cloud.CaError``.
Nothing here logs a password: the service account's is cleared from the ldap3
connection right after the bind.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import unicodedata
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import ldap3
import orjson
import structlog
from ldap3.core import exceptions as ldap_exc

from agent.cloud import CaClient, SyncAnswer
from agent.directory import (
    DirectoryError,
    DirectoryTimeout,
    DirectoryUnavailable,
    Verdict,
)
from agent.errors import AgentError
from agent.ldap_directory import (
    LdapDirectorySettings,
    _close,
    _reason,
    _search_failed,
    _service_bind_failed,
    _tune,
)
from agent.ldap_verdicts import (
    BUSY,
    MAX_USERNAME_CHARS,
    NO_SUCH_OBJECT,
    SUCCESS,
    TIME_LIMIT,
    UNAVAILABLE,
    login_value,
)
from common.usernames import canonical_username

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_USERS",
    "DirectoryUser",
    "NoUsersFound",
    "Skip",
    "SourceResult",
    "SyncIncomplete",
    "SyncReport",
    "UserSource",
    "batches",
    "map_entry",
    "push",
    "sync_once",
]

log = structlog.get_logger(__name__)

MAX_BATCH_USERS: Final = 1000  # the CA's limit per request
MAX_BATCH_BYTES: Final = 512 * 1024  # half the CA's body limit: room for any JSON overhead
MAX_IMMUTABLE_ID_CHARS: Final = 128
MAX_DISPLAY_NAME_CHARS: Final = 256
DEFAULT_PAGE_SIZE: Final = 500  # AD's default MaxPageSize is 1000; slapd has no page limit

_ENTRY_UUID = "entryuuid"
_OBJECT_GUID = "objectguid"


class SyncError(AgentError):
    """The user sync could not complete; the cloud's user list was left as it was."""


class SyncIncomplete(DirectoryError):
    """The directory did not return every user (a size or time limit, or an error part way
    through), so nothing was sent and nothing deleted in the cloud. Raise the service
    account's search limits (OpenLDAP: ``limits dn.exact=<bind dn> size=unlimited``; AD:
    MaxPageSize/MaxResultSetSize) or check the directory's log."""


class NoUsersFound(SyncError):
    """The directory returned no usable user under the base DN, so nothing was sent: a sync
    of zero users would delete every synced user of the tenant. Check
    PTA_AGENT_LDAP_BASE_DN, PTA_AGENT_LDAP_LOGIN_ATTRIBUTE and PTA_AGENT_LDAP_DOMAIN."""


class Skip(StrEnum):
    """Why a directory entry is not synced (counted, never fatal)."""

    NO_LOGIN = "no_login"  # the login attribute is empty
    BAD_LOGIN = "bad_login"  # not local@domain, too long, spaces or control characters
    OTHER_DOMAIN = "other_domain"  # a username outside the configured domain
    NO_IMMUTABLE_ID = "no_immutable_id"  # entryUUID/objectGUID missing or malformed
    DUPLICATE = "duplicate"  # two entries with one username: neither can sign in


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    """One user as the cloud stores it (``users`` table, ``ca/sync.py``)."""

    username: str
    immutable_id: str
    display_name: str

    def as_json(self) -> dict[str, str]:
        return {
            "username": self.username,
            "immutable_id": self.immutable_id,
            "display_name": self.display_name,
        }


@dataclass(frozen=True, slots=True)
class SourceResult:
    """What one read of the directory found: users sorted by username, and skips."""

    users: tuple[DirectoryUser, ...]
    skipped: Mapping[str, int]
    entries: int  # entries returned by the search

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass(frozen=True, slots=True)
class SyncReport:
    """The outcome of ``sync_once``: what was read and what the cloud did."""

    sync_id: str
    source: SourceResult
    batches: int = 0
    upserted: int = 0
    deleted: int = 0
    dry_run: bool = False
    elapsed_ms: float = 0.0
    answers: tuple[SyncAnswer, ...] = field(default=(), repr=False)


# --------------------------------------------------------------------------- mapping


def map_entry(
    raw: Mapping[str, Sequence[bytes]],
    *,
    login_attribute: str,
    domain: str,
    kind: str,
) -> DirectoryUser | Skip:
    """The user of one directory entry (``raw_attributes``), or why it is skipped.

    Pure. Attribute names are matched case-insensitively (RFC 4512 section 2.5).
    """
    attrs = {name.lower(): values for name, values in raw.items()}
    login = _first_text(attrs.get(login_attribute.lower()))
    if not login:
        return Skip.NO_LOGIN
    username = (f"{login}@{domain}" if login_attribute == "uid" else login).lower()
    local, at, suffix = username.rpartition("@")
    if at and local and suffix != domain.lower():
        return Skip.OTHER_DOMAIN
    if username != canonical_username(username):
        return Skip.BAD_LOGIN  # not ASCII: no sign-in name can find it (common.usernames)
    if len(username) > MAX_USERNAME_CHARS or isinstance(
        login_value(username, domain=domain, login_attribute=login_attribute), Verdict
    ):
        return Skip.BAD_LOGIN
    immutable_id = _immutable_id(attrs, kind)
    if immutable_id is None:
        return Skip.NO_IMMUTABLE_ID
    display = _first_text(attrs.get("displayname")) or _first_text(attrs.get("cn")) or ""
    return DirectoryUser(username, immutable_id, _printable(display)[:MAX_DISPLAY_NAME_CHARS])


def _immutable_id(attrs: Mapping[str, Sequence[bytes]], kind: str) -> str | None:
    """entryUUID (its text form) or objectGUID (16 bytes, little-endian fields, as AD and
    MS-DTYP 2.3.4 store a GUID) as the canonical lowercase UUID string."""
    try:
        if kind == "ad":
            values = attrs.get(_OBJECT_GUID) or ()
            raw = bytes(values[0]) if values else b""
            return str(uuid.UUID(bytes_le=raw)) if len(raw) == 16 else None
        text = _first_text(attrs.get(_ENTRY_UUID))
        return str(uuid.UUID(text)) if text else None
    except ValueError:
        return None


def _first_text(values: Sequence[bytes] | None) -> str | None:
    """The first value as text, stripped; None when absent or not UTF-8."""
    if not values:
        return None
    value = values[0]
    try:
        text = value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)
    except UnicodeDecodeError:
        return None
    return text.strip() or None


def _printable(text: str) -> str:
    """Control and format characters replaced by spaces (the CA refuses them: a display
    name ends up in logs and admin pages)."""
    cleaned = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in text)
    return " ".join(cleaned.split())


def dedupe(users: Iterable[DirectoryUser]) -> tuple[tuple[DirectoryUser, ...], int]:
    """Users sorted by username with every ambiguous one dropped (same username, or same
    immutable id, on more than one entry); returns them and how many entries were dropped."""
    listed = list(users)
    names = Counter(u.username for u in listed)
    ids = Counter(u.immutable_id for u in listed)
    kept = [u for u in listed if names[u.username] == 1 and ids[u.immutable_id] == 1]
    return tuple(sorted(kept, key=lambda u: u.username)), len(listed) - len(kept)


def batches(
    users: Sequence[DirectoryUser],
    *,
    max_users: int = MAX_BATCH_USERS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[list[DirectoryUser]]:
    """Consecutive batches of at most ``max_users`` users and about ``max_bytes`` of JSON."""
    batch: list[DirectoryUser] = []
    size = 0
    for user in users:
        cost = len(orjson.dumps(user.as_json())) + 1
        if batch and (len(batch) >= max_users or size + cost > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(user)
        size += cost
    if batch:
        yield batch


# --------------------------------------------------------------------------- reading


class UserSource:
    """Reads the tenant's users from the directory as the service account."""

    def __init__(self, settings: LdapDirectorySettings, *, page_size: int = DEFAULT_PAGE_SIZE):
        """Checks the settings (no I/O). Raises ``DirectoryMisconfigured``."""
        settings.check()
        self.settings = settings
        self.page_size = page_size
        login = settings.login_attribute
        category = "(objectCategory=person)" if settings.kind == "ad" else ""
        # Only entries that can have a login; AD's objectCategory keeps computers out.
        self.search_filter = f"(&(objectClass={settings.object_class}){category}({login}=*))"
        immutable = "objectGUID" if settings.kind == "ad" else "entryUUID"
        self.attributes = sorted({login, immutable, "displayName", "cn"})

    async def read(self) -> SourceResult:
        """Every user under ``base_dn`` (see the module docstring), in a worker thread.

        Raises ``DirectoryUnavailable`` (``ServiceAccountRefused`` among them),
        ``DirectoryTimeout``, ``DirectoryMisconfigured``, ``SyncIncomplete`` or another
        ``DirectoryError``.
        """
        return await asyncio.to_thread(self._read_blocking)

    def _read_blocking(self) -> SourceResult:
        conn = self._connect()
        try:
            found: list[DirectoryUser] = []
            skipped: Counter[str] = Counter()
            entries = 0
            for entry in self._entries(conn):
                entries += 1
                mapped = map_entry(
                    entry,
                    login_attribute=self.settings.login_attribute,
                    domain=self.settings.domain,
                    kind=self.settings.kind,
                )
                if isinstance(mapped, Skip):
                    skipped[str(mapped)] += 1
                else:
                    found.append(mapped)
        finally:
            _close(conn)
        users, duplicates = dedupe(found)
        if duplicates:
            skipped[str(Skip.DUPLICATE)] += duplicates
        return SourceResult(users=users, skipped=dict(skipped), entries=entries)

    def _entries(self, conn: ldap3.Connection) -> Iterator[Mapping[str, Sequence[bytes]]]:
        settings = self.settings
        try:
            pages = conn.extend.standard.paged_search(
                settings.base_dn,
                self.search_filter,
                search_scope=ldap3.SUBTREE,
                dereference_aliases=ldap3.DEREF_NEVER,
                attributes=self.attributes,
                paged_size=self.page_size,
                generator=True,
            )
            for response in pages:
                # Only entries: AD also returns continuation references for other partitions.
                if response.get("type") == "searchResEntry":
                    yield response.get("raw_attributes") or {}
        except ldap_exc.LDAPException as exc:
            raise _translate(exc, settings) from exc
        result = conn.result or {}
        code = result.get("result")
        if code in (NO_SUCH_OBJECT, BUSY, UNAVAILABLE, TIME_LIMIT):
            _search_failed(result, settings)  # raises: base DN gone, directory busy, slow
        if code != SUCCESS:
            raise SyncIncomplete(f"(the search ended with {code} {result.get('description')})")

    def _connect(self) -> ldap3.Connection:
        """A new connection bound as the service account (blocking)."""
        settings = self.settings
        tls = (
            ldap3.Tls(
                ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
                validate=ssl.CERT_REQUIRED,
            )
            if settings.is_tls
            else None
        )
        server = ldap3.Server(
            settings.url, get_info=ldap3.NONE, tls=tls, connect_timeout=settings.timeout_s
        )
        conn = ldap3.Connection(
            server,
            authentication=ldap3.SIMPLE,
            client_strategy=ldap3.SYNC,
            receive_timeout=max(1, math.ceil(settings.timeout_s)),
            raise_exceptions=False,
            auto_referrals=False,
            read_only=True,
        )
        try:
            conn.open(read_server_info=False)
            _tune(conn, settings.timeout_s)
            if settings.start_tls:
                conn.start_tls(read_server_info=False)
                _tune(conn, settings.timeout_s)
            conn.user, conn.password = settings.bind_dn, settings.bind_password
            try:
                is_bound = conn.bind(read_server_info=False)
            finally:
                conn.password = conn.request = None  # ldap3 keeps both and prints them
            if not is_bound:
                _service_bind_failed(conn.result, settings)
        except ldap_exc.LDAPException as exc:
            _close(conn)
            raise _translate(exc, settings) from exc
        except BaseException:
            _close(conn)
            raise
        return conn


def _translate(exc: ldap_exc.LDAPException, settings: LdapDirectorySettings) -> DirectoryError:
    where = settings.url
    if isinstance(exc, ldap_exc.LDAPCertificateError | ssl.SSLError) or (
        isinstance(exc, ldap_exc.LDAPSocketOpenError) and "ssl" in str(exc).lower()
    ):
        return DirectoryUnavailable(f"(url {where}: TLS failed: {_reason(exc)})")
    if isinstance(exc, ldap_exc.LDAPSocketOpenError):
        return DirectoryUnavailable(f"(url {where}: cannot connect: {_reason(exc)})")
    if isinstance(exc, ldap_exc.LDAPResponseTimeoutError | TimeoutError):
        return DirectoryTimeout(f"(no answer from {where} within {settings.timeout_s:g} s)")
    if isinstance(exc, ldap_exc.LDAPCommunicationError):
        return DirectoryUnavailable(f"(connection to {where} lost: {_reason(exc)})")
    return DirectoryError(f"(ldap3 {type(exc).__name__}: {_reason(exc)})")


# --------------------------------------------------------------------------- pushing


async def push(ca: CaClient, users: Sequence[DirectoryUser], *, sync_id: str) -> list[SyncAnswer]:
    """Send ``users`` to the CA in batches, the last one ``final``; the answers in order.

    Raises ``NoUsersFound`` for an empty list, ``agent.cloud.CaError`` when the CA refuses
    a batch (nothing of that batch is written, and without the final batch nothing is
    deleted), ``agent.https`` errors.
    """
    if not users:
        raise NoUsersFound()
    chunks = list(batches(users))
    answers = []
    for index, chunk in enumerate(chunks):
        is_final = index == len(chunks) - 1
        answer = await ca.sync_users(sync_id, [user.as_json() for user in chunk], final=is_final)
        log.debug(
            "users_batch_synced", batch=index + 1, of=len(chunks), users=len(chunk),
            upserted=answer.upserted, deleted=answer.deleted,
        )  # fmt: skip
        answers.append(answer)
    return answers


async def sync_once(
    source: UserSource, ca: CaClient | None, *, dry_run: bool = False
) -> SyncReport:
    """Read the directory and (unless ``dry_run``) push the users to the CA.

    ``ca`` may be None for a dry run. Raises what ``UserSource.read`` and ``push`` raise.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    sync_id = str(uuid.uuid4())
    result = await source.read()
    if dry_run or ca is None:
        if not result.users:
            log.warning("users_sync_empty", entries=result.entries)
        return SyncReport(
            sync_id=sync_id, source=result, dry_run=True,
            elapsed_ms=round((loop.time() - started) * 1000, 1),
        )  # fmt: skip
    answers = await push(ca, result.users, sync_id=sync_id)
    report = SyncReport(
        sync_id=sync_id,
        source=result,
        batches=len(answers),
        upserted=sum(a.upserted for a in answers),
        deleted=sum(a.deleted for a in answers),
        elapsed_ms=round((loop.time() - started) * 1000, 1),
        answers=tuple(answers),
    )
    log.info(
        "users_synced",
        sync_id=sync_id,
        users=len(result.users),
        skipped=dict(result.skipped),
        batches=report.batches,
        upserted=report.upserted,
        deleted=report.deleted,
        elapsed_ms=report.elapsed_ms,
    )
    return report


def describe_skips(skipped: Mapping[str, int]) -> str:
    """``"3 other_domain, 1 duplicate"`` (empty when nothing was skipped)."""
    return ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()) if count)
