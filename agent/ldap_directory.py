"""``LdapDirectory``: the ``Directory`` that asks an LDAP server (OpenLDAP + ppolicy, or AD).

How one password is validated (dex's LDAP connector, docs/contributing.md §2):
1. refused without any LDAP operation: an empty password (a simple bind with an empty
   password is an *anonymous* bind that "succeeds", RFC 4513 section 5.1.2), one longer
   than ``MAX_PASSWORD_CHARS`` or not encodable as UTF-8 (``invalid_credentials``); a
   username that is not ``local@<domain>`` with the configured domain, longer than
   ``MAX_USERNAME_CHARS``, or holding control or space characters (``invalid_username``);
2. search as the service account, from ``base_dn``, for
   ``(&(objectClass=<user_object_class>)(<login_attribute>=<value>))``; the value is the
   local part for ``uid`` and the whole username for ``mail``/``userPrincipalName``,
   escaped exactly once with ``ldap3.utils.conv.escape_filter_chars`` (RFC 4515);
   0 entries is ``invalid_credentials`` (same detail as a wrong password), more than one
   ``invalid_username``;
3. simple bind as that entry's DN with the password sent as its UTF-8 bytes (ldap3 would
   otherwise SASLprep a ``str``, NFKC-normalising it and refusing some characters, so a
   valid password could fail), with the password policy request control for OpenLDAP;
4. map the result with ``agent.ldap_verdicts`` (the status table is its docstring): for
   ``accountLocked`` read ``pwdAccountLockedTime`` as the service account,
   ``000001010000Z`` meaning disabled, anything else locked.

Threads and connections: ldap3 is blocking, so every LDAP call runs in a
``ThreadPoolExecutor`` of ``pool_size`` threads. Each thread keeps two open connections and
reuses them: one bound as the service account for searches, one that is re-bound as each
user (rebinding an open connection is ~1.5x faster than a new connection per bind,
docs/servers.md). Sockets get TCP_NODELAY and a receive timeout of ``timeout_s``. A socket
error discards the connection and the operation is tried once more on a fresh one (an idle
connection the server closed is the usual cause), then ``DirectoryUnavailable``; a timeout
discards the connection and raises ``DirectoryTimeout`` without a retry (the server may
still be working on it). ``validate`` as a whole is also bounded by
``BACKSTOP_FACTOR * timeout_s`` on the event loop.

Settings are checked and the service account binds once at ``open``: a bad setting fails
at start with ``DirectoryMisconfigured`` naming it, an unreachable server with
``DirectoryUnavailable`` naming the URL.

Secrets: the password is never logged or put in an exception; ldap3 keeps the last bind
request and the password on the connection object (and prints it in ``repr``), so both
are cleared right after every bind.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Self, TypeVar
from urllib.parse import urlsplit

import ldap3
import structlog
from cachetools import TTLCache
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars

from agent.directory import (
    BIND_MARGIN_S,
    REJECTED_DETAIL,
    TOO_LATE_DETAIL,
    DirectoryError,
    DirectoryMisconfigured,
    DirectoryTimeout,
    DirectoryUnavailable,
    Verdict,
)
from agent.ldap_verdicts import (
    BUSY,
    CONFIDENTIALITY,
    INVALID_CREDENTIALS,
    INVALID_DN,
    NO_SUCH_OBJECT,
    SIZE_LIMIT,
    SUCCESS,
    TIME_LIMIT,
    UNAVAILABLE,
    ad_verdict,
    locked_verdict,
    login_value,
    openldap_verdict,
)
from common.ppolicy import request_control
from common.wire import Status

__all__ = [
    "MAX_PASSWORD_CHARS",
    "LdapDirectory",
    "LdapDirectorySettings",
    "ServiceAccountRefused",
]

log = structlog.get_logger(__name__)

# AD caps passwords at 256 characters; anything beyond 1024 is never a real password.
MAX_PASSWORD_CHARS: Final = 1024
BACKSTOP_FACTOR: Final = 3.0
DN_CACHE_MAX_ENTRIES: Final = 100_000  # about 20 MB at most; least recently used go first

LoginAttribute = Literal["uid", "mail", "userPrincipalName"]
Kind = Literal["openldap", "ad"]
_LOGIN_ATTRIBUTES: Final = ("uid", "mail", "userPrincipalName")
_KINDS: Final = ("openldap", "ad")
_SCHEMES: Final = ("ldap", "ldaps", "ldapi")
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}\Z")

_T = TypeVar("_T")
# The useful part of an OpenSSL error inside ldap3's nested exception text.
_TLS_REASON = re.compile(r"\[SSL: [A-Z_]+\][^'\")(]*")


class ServiceAccountRefused(DirectoryUnavailable):
    """The directory refused the agent's service account: check the settings bind_dn and
    bind_password (the password may have been changed or the account disabled)."""


@dataclass(frozen=True, slots=True)
class LdapDirectorySettings:
    """Where and how to validate passwords; checked by ``check()`` (``LdapDirectory.open``).

    - ``url``: ``ldap://host:port``, ``ldaps://host:port`` or ``ldapi://<socket path>``;
    - ``bind_dn``/``bind_password``: the read-only service account that searches;
    - ``base_dn``: where users are searched (subtree);
    - ``domain``: the one UPN suffix this directory answers for (``contoso.test``);
    - ``login_attribute``: ``uid`` (value = the part before ``@``), ``mail`` or
      ``userPrincipalName`` (value = the whole username);
    - ``user_object_class``: default ``inetOrgPerson`` (openldap) or ``user`` (ad);
    - ``ca_file``: PEM bundle that verifies the server for ldaps or StartTLS (unset: the
      system's CAs); ``start_tls``: upgrade an ``ldap://`` connection with StartTLS;
    - ``timeout_s``: connect and per-response timeout; ``pool_size``: threads (each with
      two connections); ``kind``: ``openldap`` (ppolicy control) or ``ad`` (AD codes).
    """

    url: str
    bind_dn: str
    bind_password: str = field(repr=False)
    base_dn: str
    domain: str
    login_attribute: LoginAttribute = "uid"
    user_object_class: str | None = None
    ca_file: Path | None = None
    start_tls: bool = False
    timeout_s: float = 5.0
    pool_size: int = 8
    kind: Kind = "openldap"
    # How long a username's DN found by the service search is reused (0 = search every
    # time). See `LdapDirectory._validate_blocking` for why this is safe.
    dn_cache_ttl_s: float = 60.0

    @property
    def object_class(self) -> str:
        """The user object class searched for (the setting or the kind's default)."""
        if self.user_object_class:
            return self.user_object_class
        return "user" if self.kind == "ad" else "inetOrgPerson"

    @property
    def is_tls(self) -> bool:
        return self.url.lower().startswith("ldaps://") or self.start_tls

    def check(self) -> None:
        """Raise ``DirectoryMisconfigured`` naming the first bad setting and its fix."""
        problem = self._problem()
        if problem:
            raise DirectoryMisconfigured(problem)

    def _problem(self) -> str:
        try:
            parts = urlsplit(self.url)
            _ = parts.port  # raises ValueError for a bad port
        except ValueError:
            return f"url: {self.url!r} is not a valid LDAP URL (ldap://host:port)."
        if parts.scheme.lower() not in _SCHEMES:
            return f"url: scheme must be one of {', '.join(_SCHEMES)}, not {parts.scheme!r}."
        if parts.scheme.lower() != "ldapi" and not parts.hostname:
            return f"url: {self.url!r} names no host."
        if parts.scheme.lower() == "ldapi" and not parts.netloc:
            return "url: ldapi:// needs the percent-encoded socket path."
        if not self.bind_dn.strip():
            return "bind_dn: set the DN of the agent's read-only service account."
        if not self.bind_password:
            # An empty password would make the service bind anonymous (RFC 4513 5.1.2).
            return "bind_password: set the service account's password (empty is anonymous)."
        if not self.base_dn.strip():
            return "base_dn: set the DN under which users are searched."
        if not self.domain or "@" in self.domain or self.domain != self.domain.strip():
            return "domain: set the UPN suffix this directory serves, e.g. contoso.test."
        if self.login_attribute not in _LOGIN_ATTRIBUTES:
            return f"login_attribute: must be one of {', '.join(_LOGIN_ATTRIBUTES)}."
        if not _ATTRIBUTE_NAME.match(self.object_class):
            return "user_object_class: must be an attribute-style name such as inetOrgPerson."
        if self.kind not in _KINDS:
            return f"kind: must be one of {', '.join(_KINDS)}."
        if self.start_tls and parts.scheme.lower() != "ldap":
            return "start_tls: only for ldap:// URLs (ldaps:// is TLS from the start)."
        if self.ca_file is not None and not self.ca_file.is_file():
            return f"ca_file: {self.ca_file} is not a readable file."
        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= 300):
            return "timeout_s: must be more than 0 and at most 300 seconds."
        if not 1 <= self.pool_size <= 64:
            return "pool_size: must be 1 to 64 threads."
        return ""


class _Conns:
    """One worker thread's server object and its two reusable connections."""

    __slots__ = ("bind", "search", "server")

    def __init__(self, server: ldap3.Server) -> None:
        # One Server per thread: ldap3 keeps the current address on the Server object
        # and resets it when any of its connections closes.
        self.server = server
        self.search: ldap3.Connection | None = None
        self.bind: ldap3.Connection | None = None


class LdapDirectory:
    """A ``Directory`` over ldap3; build it with ``await LdapDirectory.open(settings)``."""

    def __init__(self, settings: LdapDirectorySettings) -> None:
        """Check the settings and prepare (no I/O). Raises ``DirectoryMisconfigured``."""
        settings.check()
        self.settings = settings
        self._tls = (
            ldap3.Tls(
                ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
                validate=ssl.CERT_REQUIRED,
            )
            if settings.is_tls
            else None
        )
        # ldap3 packs receive_timeout into a C long on Linux: whole seconds. The socket
        # timeout is then set to the exact float after each connect (_open).
        self._receive_timeout = max(1, math.ceil(settings.timeout_s))
        self._backstop_s = BACKSTOP_FACTOR * settings.timeout_s
        self._bind_controls = [request_control()] if settings.kind == "openldap" else None
        self._attribute = settings.login_attribute
        category = "(objectCategory=person)" if settings.kind == "ad" else ""
        self._filter_prefix = f"(&(objectClass={settings.object_class}){category}"
        self._local = threading.local()
        self._registry: list[_Conns] = []
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._executor = ThreadPoolExecutor(
            max_workers=settings.pool_size, thread_name_prefix="pta-ldap"
        )
        self._is_closed = False
        # Entries live dn_cache_ttl_s; when full, the least recently used goes first.
        self._dn_cache: TTLCache[str, str] = TTLCache(
            DN_CACHE_MAX_ENTRIES, ttl=max(settings.dn_cache_ttl_s, 0.0)
        )

    @classmethod
    async def open(cls, settings: LdapDirectorySettings) -> Self:
        """Check the settings, connect, bind as the service account and read ``base_dn``.

        Raises ``DirectoryMisconfigured`` (a setting, named), ``ServiceAccountRefused``,
        ``DirectoryUnavailable`` (the URL cannot be reached, TLS fails) or
        ``DirectoryTimeout``.
        """
        directory = cls(settings)
        try:
            await directory._run(directory._check_base)
        except BaseException:
            await directory.aclose()
            raise
        if not settings.is_tls and not settings.url.lower().startswith("ldapi://"):
            host = urlsplit(settings.url).hostname or ""
            if host not in ("127.0.0.1", "::1", "localhost"):
                log.warning("directory_cleartext", url=settings.url, hint="use ldaps")
        log.info("directory_opened", url=settings.url, kind=settings.kind)
        return directory

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def stats(self) -> dict[str, int]:
        """Counters since open: searches, user_binds, service_binds, reconnects, timeouts."""
        with self._lock:
            return dict(self._counts)

    async def validate(
        self, username: str, password: str, *, deadline: float | None = None
    ) -> Verdict:
        """See ``agent.directory.Directory.validate`` and the module docstring."""
        if self._is_closed:
            raise DirectoryError("(validate() after aclose())")
        # Before any LDAP operation: an empty simple-bind password is an anonymous bind.
        if not password:
            return Verdict(Status.INVALID_CREDENTIALS, "empty password refused")
        if len(password) > MAX_PASSWORD_CHARS:
            return Verdict(Status.INVALID_CREDENTIALS, "password too long")
        try:
            secret = password.encode("utf-8")
        except UnicodeEncodeError:
            return Verdict(Status.INVALID_CREDENTIALS, "password is not valid Unicode")
        value = login_value(
            username, domain=self.settings.domain, login_attribute=self.settings.login_attribute
        )
        if isinstance(value, Verdict):
            return value
        return await self._run(self._validate_blocking, value, secret, deadline)

    async def aclose(self) -> None:
        """Stop the threads (waiting for running calls) and unbind every connection."""
        if self._is_closed:
            return
        self._is_closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        with self._lock:
            registry, self._registry = self._registry, []
        for conns in registry:
            _close(conns.search)
            _close(conns.bind)
            conns.search = conns.bind = None

    # --- on the event loop ------------------------------------------------------------

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking call on the pool with the caller's log context, time-bounded."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # so thread log lines keep correlation_id
        try:
            async with asyncio.timeout(self._backstop_s):
                return await loop.run_in_executor(self._executor, context.run, function, *args)
        except TimeoutError:
            self._count("timeouts")
            raise DirectoryTimeout(
                f"(no answer within {self._backstop_s:g} s from {self.settings.url})"
            ) from None
        except RuntimeError as exc:  # the executor was shut down under us
            if self._is_closed:
                raise DirectoryError("(validate() after aclose())") from exc
            raise

    # --- in a worker thread -----------------------------------------------------------

    def _validate_blocking(self, value: str, secret: bytes, deadline: float | None) -> Verdict:
        """Search for the user's DN (or reuse a recent answer), bind as it, map the result.

        The DN cache saves the service search (the larger half of an LDAP validation) for
        a user seen within ``dn_cache_ttl_s``. A bind through a cached DN is trusted only
        when the directory accepts or explains it (success, expired, must change, locked).
        When it says "invalid credentials" or "no such object", the cached DN may be
        stale (entry renamed, deleted, login moved to another entry): the DN is searched
        again, and only if it changed is the password tried on the new DN, so a wrong
        password still costs the user exactly one failed bind in the directory's lockout
        count. A successful bind proves the password belongs to that entry; the residual
        risk, a login name moved to another entry within the TTL, is bounded by the TTL.

        No bind starts with less than ``BIND_MARGIN_S`` before ``deadline``: this runs in a
        worker thread, possibly after waiting for one, and an await cancelled at the
        deadline would not stop it; the check sits right before each bind.
        """
        conns = self._conns()
        cached = self._cached_dn(value)
        if cached is not None:
            self._count("dn_cache_hits")
            if _too_late(deadline):
                return Verdict(Status.DIRECTORY_TIMEOUT, TOO_LATE_DETAIL)
            result = self._user_bind(conns, cached, secret)
            if not self._is_possibly_stale(result):
                return self._verdict(conns, cached, result)
            found = self._service_call(conns, lambda conn: self._find(conn, value))
            if found == cached:
                return self._verdict(conns, cached, result)  # genuinely the wrong password
            self._forget_dn(value)
            if isinstance(found, Verdict):
                return found
        else:
            found = self._service_call(conns, lambda conn: self._find(conn, value))
            if isinstance(found, Verdict):
                return found
        if _too_late(deadline):
            return Verdict(Status.DIRECTORY_TIMEOUT, TOO_LATE_DETAIL)
        result = self._user_bind(conns, found, secret)
        verdict = self._verdict(conns, found, result)
        if verdict.status is not Status.INVALID_CREDENTIALS:
            self._remember_dn(value, found)
        return verdict

    def _verdict(self, conns: _Conns, dn: str, result: Mapping[str, Any]) -> Verdict:
        if self.settings.kind == "ad":
            return ad_verdict(result)
        verdict = openldap_verdict(result)
        if verdict is None:
            return self._service_call(conns, lambda conn: _lock_verdict(conn, dn))
        return verdict

    @staticmethod
    def _is_possibly_stale(result: Mapping[str, Any]) -> bool:
        """A bind answer that could mean "this DN is no longer the user's"."""
        if result.get("result") == NO_SUCH_OBJECT:
            return True
        if result.get("result") != INVALID_CREDENTIALS:
            return False
        # OpenLDAP: 49 with a ppolicy error explains itself (expired, locked); AD: only
        # 52e/525 (wrong password, unknown user) are ambiguous.
        message = str(result.get("message") or "").lower()
        return not any(code in message for code in ("data 53", "data 70", "data 77"))

    def _cached_dn(self, value: str) -> str | None:
        if self.settings.dn_cache_ttl_s <= 0:
            return None
        with self._lock:
            return self._dn_cache.get(value)

    def _remember_dn(self, value: str, dn: str) -> None:
        if self.settings.dn_cache_ttl_s <= 0:
            return
        with self._lock:
            self._dn_cache[value] = dn

    def _forget_dn(self, value: str) -> None:
        with self._lock:
            self._dn_cache.pop(value, None)

    def _find(self, conn: ldap3.Connection, value: str) -> str | Verdict:
        """The DN of the one entry whose login attribute is ``value``, or a verdict."""
        self._count("searches")
        search_filter = f"{self._filter_prefix}({self._attribute}={escape_filter_chars(value)}))"
        conn.search(
            self.settings.base_dn,
            search_filter,
            search_scope=ldap3.SUBTREE,
            dereference_aliases=ldap3.DEREF_NEVER,
            attributes=[ldap3.NO_ATTRIBUTES],
            size_limit=2,  # two are enough to know "more than one"
            time_limit=self._receive_timeout,
        )
        code = conn.result.get("result")
        # Only entries: AD also returns continuation references for other partitions.
        entries = [r["dn"] for r in conn.response or () if r.get("type") == "searchResEntry"]
        if code not in (SUCCESS, SIZE_LIMIT):
            _search_failed(conn.result, self.settings)
        if not entries:
            return Verdict(Status.INVALID_CREDENTIALS, REJECTED_DETAIL)
        if len(entries) > 1 or code == SIZE_LIMIT:
            return Verdict(
                Status.INVALID_USERNAME,
                f"username matches more than one directory entry ({self._attribute})",
            )
        dn: str = entries[0]
        return dn

    def _check_base(self) -> None:
        """At open: the service account binds and can read ``base_dn``."""

        def read_base(conn: ldap3.Connection) -> None:
            conn.search(
                self.settings.base_dn,
                "(objectClass=*)",
                search_scope=ldap3.BASE,
                attributes=[ldap3.NO_ATTRIBUTES],
                time_limit=self._receive_timeout,
            )
            if conn.result.get("result") != SUCCESS or not conn.response:
                raise DirectoryMisconfigured(
                    f"base_dn: {self.settings.base_dn!r} does not exist or the service "
                    f"account may not read it ({conn.result.get('description')})."
                )

        self._service_call(self._conns(), read_base)

    def _conns(self) -> _Conns:
        conns: _Conns | None = getattr(self._local, "conns", None)
        if conns is None:
            server = ldap3.Server(
                self.settings.url,
                get_info=ldap3.NONE,  # else ldap3 re-reads the schema after every bind
                tls=self._tls,
                connect_timeout=self.settings.timeout_s,
            )
            conns = _Conns(server)
            self._local.conns = conns
            with self._lock:
                self._registry.append(conns)
        return conns

    def _open(self, conns: _Conns) -> ldap3.Connection:
        """A new open (unbound) connection with tuned socket; raises ldap3 errors."""
        conn = ldap3.Connection(
            conns.server,
            authentication=ldap3.SIMPLE,
            client_strategy=ldap3.SYNC,
            receive_timeout=self._receive_timeout,
            raise_exceptions=False,
            auto_referrals=False,
            read_only=True,
        )
        try:
            conn.open(read_server_info=False)
            _tune(conn, self.settings.timeout_s)
            if self.settings.start_tls:
                conn.start_tls(read_server_info=False)
                _tune(conn, self.settings.timeout_s)
        except BaseException:
            _close(conn)
            raise
        return conn

    def _open_service(self, conns: _Conns) -> ldap3.Connection:
        conn = self._open(conns)
        try:
            self._count("service_binds")
            conn.user, conn.password = self.settings.bind_dn, self.settings.bind_password
            try:
                is_bound = conn.bind(read_server_info=False)
            finally:
                conn.password = conn.request = None  # ldap3 keeps both and prints them
            if not is_bound:
                _service_bind_failed(conn.result, self.settings)
        except BaseException:
            _close(conn)
            raise
        return conn

    def _service_call(self, conns: _Conns, op: Callable[[ldap3.Connection], _T]) -> _T:
        """``op`` on this thread's service connection; reconnect once on a socket error."""
        for attempt in (1, 2):
            try:
                if conns.search is None:
                    conns.search = self._open_service(conns)
                return op(conns.search)
            except ldap_exc.LDAPException as exc:
                _close(conns.search)
                conns.search = None
                self._translate(exc, is_last=attempt == 2)
        raise AssertionError("unreachable")  # pragma: no cover

    def _user_bind(self, conns: _Conns, dn: str, secret: bytes) -> Mapping[str, Any]:
        """Bind this thread's user connection as ``dn``; the result dict (no secrets)."""
        for attempt in (1, 2):
            try:
                if conns.bind is None:
                    conns.bind = self._open(conns)
                conn = conns.bind
                self._count("user_binds")
                conn.user, conn.password = dn, secret
                try:
                    conn.bind(read_server_info=False, controls=self._bind_controls)
                finally:
                    conn.password = conn.request = None
                return dict(conn.result)
            except ldap_exc.LDAPException as exc:
                _close(conns.bind)
                conns.bind = None
                self._translate(exc, is_last=attempt == 2)
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, exc: ldap_exc.LDAPException, *, is_last: bool) -> None:
        """Raise the directory error for an ldap3 exception, or return to retry once."""
        where = self.settings.url
        if isinstance(exc, ldap_exc.LDAPCertificateError | ssl.SSLError) or (
            isinstance(exc, ldap_exc.LDAPSocketOpenError) and "ssl" in str(exc).lower()
        ):
            raise DirectoryUnavailable(
                f"(url {where}: TLS failed: {_reason(exc)}; check ca_file and the "
                "server certificate's names)"
            ) from exc
        if isinstance(exc, ldap_exc.LDAPSocketOpenError):
            raise DirectoryUnavailable(f"(url {where}: cannot connect: {_reason(exc)})") from exc
        if isinstance(exc, TimeoutError | ldap_exc.LDAPResponseTimeoutError):
            self._count("timeouts")
            raise DirectoryTimeout(
                f"(no answer from {where} within {self.settings.timeout_s:g} s)"
            ) from exc
        if isinstance(exc, ldap_exc.LDAPStartTLSError):
            raise DirectoryUnavailable(f"(StartTLS with {where} failed: {_reason(exc)})") from exc
        if not isinstance(exc, ldap_exc.LDAPCommunicationError):
            raise DirectoryError(f"(ldap3 {type(exc).__name__}: {_reason(exc)})") from exc
        if is_last:
            raise DirectoryUnavailable(f"(connection to {where} lost: {_reason(exc)})") from exc
        self._count("reconnects")
        log.info("directory_reconnecting", error=_reason(exc))

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1


def _too_late(deadline: float | None) -> bool:
    """True when a bind could no longer finish before ``deadline`` (``BIND_MARGIN_S``)."""
    if deadline is not None and time.time() > deadline - BIND_MARGIN_S:
        log.info("bind_skipped", reason="too little time left before the deadline")
        return True
    return False


def _lock_verdict(conn: ldap3.Connection, dn: str) -> Verdict:
    """Read ``pwdAccountLockedTime`` of a user whose bind answered ``accountLocked``."""
    conn.search(
        dn,
        "(objectClass=*)",
        search_scope=ldap3.BASE,
        attributes=["pwdAccountLockedTime"],
    )
    values: list[bytes] = []
    if conn.result.get("result") == SUCCESS and conn.response:
        raw = conn.response[0].get("raw_attributes") or {}
        values = list(raw.get("pwdAccountLockedTime") or ())
    return locked_verdict(values)


def _service_bind_failed(result: Mapping[str, Any], settings: LdapDirectorySettings) -> None:
    code = result.get("result")
    description = result.get("description")
    if code in (INVALID_CREDENTIALS, NO_SUCH_OBJECT, INVALID_DN):
        raise ServiceAccountRefused(f"({settings.bind_dn}: {description})")
    if code == CONFIDENTIALITY:
        raise DirectoryMisconfigured("url: the directory requires TLS for binds (use ldaps).")
    raise DirectoryUnavailable(f"(service account bind at {settings.url}: {description})")


def _search_failed(result: Mapping[str, Any], settings: LdapDirectorySettings) -> None:
    code = result.get("result")
    description = result.get("description")
    if code == NO_SUCH_OBJECT:
        raise DirectoryMisconfigured(f"base_dn: {settings.base_dn!r} does not exist.")
    if code in (BUSY, UNAVAILABLE):
        raise DirectoryUnavailable(f"(the directory answered {description})")
    if code == TIME_LIMIT:
        raise DirectoryTimeout(f"(the directory answered {description})")
    raise DirectoryError(f"(user search failed: {code} {description})")


def _tune(conn: ldap3.Connection, timeout_s: float) -> None:
    """Exact (float) timeout and TCP_NODELAY: no Nagle/delayed-ACK stall per request."""
    sock = conn.socket
    if sock is None:
        return
    sock.settimeout(timeout_s)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close(conn: ldap3.Connection | None) -> None:
    """Unbind quietly: the socket may already be gone."""
    if conn is None:
        return
    try:
        conn.unbind()
    except (ldap_exc.LDAPException, OSError):
        pass


def _reason(exc: BaseException) -> str:
    """A short reason; ldap3 messages hold socket errors, never request data."""
    text = " ".join(str(exc).split())
    tls = _TLS_REASON.search(text)
    if tls:
        return tls.group(0)
    return text[:160] if text else type(exc).__name__
