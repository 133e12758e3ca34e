"""LDIF for the private slapd: its cn=config and its seed data, generated without I/O.

``infra.slapd`` feeds ``config_ldif`` to ``slapadd -n0`` and ``data_ldif`` to
``slapadd -b dc=test``.

Directory layout (one mdb database, suffix ``dc=test``, one ppolicy overlay)::

    dc=test
    ├── cn=admin                      rootdn (no entry; password only in cn=config)
    ├── ou=policies
    │   ├── cn=default                the users' policy (olcPPolicyDefault)
    │   ├── cn=locked                 cn=default with pwdLockoutDuration 0 (seeded lock)
    │   └── cn=service                the service accounts' policy (no lockout, no expiry)
    ├── dc=contoso                    one subtree per tenant (DemoTenant.base_dn)
    │   ├── cn=pta-reader             read-only service account the agents search with
    │   └── ou=people                 named demo users + bulk users user0001..
    └── dc=fabrikam                   (same shape)

One database rather than one per tenant: a single ppolicy overlay and policy entries, one
set of ACLs, one rootdn; tenant isolation is the ACLs' job (each reader sees only its
subtree, never ``userPassword``), which the integration tests check.

Seeded user states (slapadd bypasses overlays, so the ppolicy attributes are written here):

- active: ``pwdChangedTime`` = seed time (without it a password never expires);
- password_expired: ``pwdChangedTime`` far older than ``pwdMaxAge``;
- must_change_password: ``pwdReset: TRUE``;
- account_disabled: ``pwdAccountLockedTime: 000001010000Z`` (administrative, permanent);
- account_locked: ``pwdAccountLockedTime`` = a real timestamp, as a failure lockout writes
  it, plus ``pwdPolicySubentry`` pointing at ``cn=locked`` (the default policy with
  ``pwdLockoutDuration: 0``), so the seeded lock never times out on a long-running stack
  while users locked out by failed binds still unlock after ``LOCKOUT_DURATION_S``.
  (A future ``pwdAccountLockedTime`` does not work: slapd 2.5.13 lets such a user bind.)

Policy (cn=default): pwdMaxAge 1 year, pwdGraceAuthNLimit 0, pwdLockout TRUE,
pwdMaxFailure 5 within pwdFailureCountInterval 60 s, pwdLockoutDuration 900 s,
pwdMustChange TRUE (an administrator's password reset sets pwdReset).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ldap3.utils.dn import escape_rdn

from common.ppolicy import PERMANENT_LOCK_TIME
from infra.demo import Demo, DemoTenant, DemoUser, UserState
from infra.server import StackError

SUFFIX = "dc=test"
POLICIES_DN = f"ou=policies,{SUFFIX}"
DEFAULT_POLICY_DN = f"cn=default,{POLICIES_DN}"
LOCKED_POLICY_DN = f"cn=locked,{POLICIES_DN}"
SERVICE_POLICY_DN = f"cn=service,{POLICIES_DN}"

MAX_AGE_S = 365 * 24 * 3600  # pwdMaxAge: an active seed stays valid for a year
LOCKOUT_DURATION_S = 900  # pwdLockoutDuration: 15 min, AD-like auto-unlock
# pwdMaxFailure. docs/design.md (§7, security rules) wants the STS smart lockout to trip before
# the directory's: the stack runs the STS at threshold 4 (infra/services.py) with a first
# lockout of 120 s, longer than slapd's 60 s window plus a request timeout and a margin,
# so no window of slapd's ever sees 5 failures: guessing is stopped in the cloud and the
# user is not locked out on-premises. The STS checks this at start-up
# (PTA_STS_DIRECTORY_LOCKOUT_*, from these two numbers).
MAX_FAILURE = 5
FAILURE_COUNT_INTERVAL_S = 60
EXPIRED_CHANGED_TIME = "20000101000000Z"  # far beyond pwdMaxAge for password_expired
ROOT_PEERCRED_DN = "gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth"

Attrs = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class ConfigPaths:
    """Absolute paths that cn=config refers to (all inside the state folder)."""

    data_dir: Path
    pid_file: Path
    args_file: Path
    tls_cert: Path
    tls_key: Path


def _config_path(path: Path) -> str:
    """A path as a cn=config value: slapd splits values at blanks unless double-quoted,
    so a path with spaces is quoted. slapd 2.5 takes no escaped quote in olcDbDirectory:
    a path with a double quote or backslash is refused here, with the fix."""
    if '"' in str(path) or "\\" in str(path):
        raise StackError(
            f"slapd cannot use a path with a double quote or a backslash: {path}; "
            f"move the checkout (or --state-dir) to a folder without them"
        )
    return f'"{path}"'


def ssha(password: str, salt: bytes | None = None) -> str:
    """``{SSHA}`` hash of a password as slapd stores it (SHA-1 of password + 8-byte salt).

    Weak against offline cracking, but it is slapd's default scheme and this is demo data;
    a bind costs the server one SHA-1, which keeps load tests about the PTA path.
    """
    salt = os.urandom(8) if salt is None else salt
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def generalized_time(moment: datetime) -> str:
    """An LDAP GeneralizedTime in UTC, second precision (RFC 4517 3.3.13)."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


def _is_safe(value: str) -> bool:
    """RFC 2849 SAFE-STRING: ASCII without NUL/CR/LF, not starting with space, ':' or '<'."""
    if not value:
        return True
    if value[0] in " :<" or value[-1] == " ":
        return False
    return all(0x01 <= ord(c) <= 0x7F and c not in "\r\n" for c in value)


def _line(attr: str, value: str) -> str:
    if _is_safe(value):
        return f"{attr}: {value}"
    return f"{attr}:: {base64.b64encode(value.encode()).decode('ascii')}"


def entry(dn: str, attrs: Attrs) -> str:
    """One LDIF record (RFC 2849); unsafe values are base64-encoded. No line folding:
    slapadd reads long lines fine."""
    lines = [_line("dn", dn), *(_line(a, v) for a, v in attrs)]
    return "\n".join(lines) + "\n\n"


def user_dn(tenant: DemoTenant, uid: str) -> str:
    """The DN of a tenant's user (named or bulk)."""
    return f"uid={escape_rdn(uid)},{tenant.people_dn}"


# --- cn=config -----------------------------------------------------------------------


def _acl(tenants: Sequence[DemoTenant]) -> list[str]:
    """olcAccess of the data database, first match wins (slapd.access(5))."""
    readers = " ".join(f'by dn.exact="{t.service_dn}" read' for t in tenants)
    rules = [
        # root over ldapi (SASL EXTERNAL) may do anything; everyone else falls through.
        f'to * by dn.exact="{ROOT_PEERCRED_DN}" manage by * break',
        # Anyone may bind (auth); users change their own password; nobody reads it.
        "to attrs=userPassword by self =wx by anonymous auth by * none",
    ]
    rules += [
        # The reader sees its own tenant's entries including the operational ppolicy
        # attributes (pwdAccountLockedTime, pwdChangedTime, pwdReset); nothing else does.
        f'to dn.subtree="{t.base_dn}" by dn.exact="{t.service_dn}" read by * none'
        for t in tenants
    ]
    rules += [
        # Policies hold no secrets; readers may use pwdMaxAge to tell users about expiry.
        f'to dn.subtree="{POLICIES_DN}" {readers} by * none',
        "to * by * none",
    ]
    return [f"{{{i}}}{rule}" for i, rule in enumerate(rules)]


def config_ldif(
    paths: ConfigPaths,
    demo: Demo,
    schemas: Iterable[str],
    *,
    module_path: str = "/usr/lib/ldap",
) -> str:
    """cn=config for ``slapadd -n0``; ``schemas`` are the texts of the schema LDIF files
    (core, cosine, nis, inetorgperson, namedobject), in that order."""
    parts = [
        entry(
            "cn=config",
            [
                ("objectClass", "olcGlobal"),
                ("cn", "config"),
                ("olcPidFile", _config_path(paths.pid_file)),
                ("olcArgsFile", _config_path(paths.args_file)),
                ("olcTLSCertificateFile", _config_path(paths.tls_cert)),
                ("olcTLSCertificateKeyFile", _config_path(paths.tls_key)),
                ("olcTLSProtocolMin", "3.3"),  # TLS 1.2 or later (docs/contributing.md §3)
                # Nothing to syslog (there is no syslogd here, and each failed syslog()
                # costs a connect() per operation); errors reach stderr via `-d none`.
                ("olcLogLevel", "0"),
            ],
        ),
        entry(
            "cn=module{0},cn=config",
            [
                ("objectClass", "olcModuleList"),
                ("cn", "module{0}"),
                ("olcModulePath", module_path),
                ("olcModuleLoad", "{0}back_mdb"),
                ("olcModuleLoad", "{1}ppolicy"),
            ],
        ),
        entry("cn=schema,cn=config", [("objectClass", "olcSchemaConfig"), ("cn", "schema")]),
    ]
    parts += [text.strip() + "\n\n" for text in schemas]
    parts += [
        entry(
            "olcDatabase={-1}frontend,cn=config",
            [
                ("objectClass", "olcDatabaseConfig"),
                ("objectClass", "olcFrontendConfig"),
                ("olcDatabase", "{-1}frontend"),
                ("olcPasswordHash", "{SSHA}"),
            ],
        ),
        entry(
            "olcDatabase={0}config,cn=config",
            [
                ("objectClass", "olcDatabaseConfig"),
                ("olcDatabase", "{0}config"),
                ("olcAccess", f'{{0}}to * by dn.exact="{ROOT_PEERCRED_DN}" manage by * none'),
            ],
        ),
        entry(
            "olcDatabase={1}mdb,cn=config",
            [
                ("objectClass", "olcDatabaseConfig"),
                ("objectClass", "olcMdbConfig"),
                ("olcDatabase", "{1}mdb"),
                ("olcSuffix", SUFFIX),
                ("olcRootDN", demo.ldap_admin_dn),
                ("olcRootPW", ssha(demo.ldap_admin_password)),
                ("olcDbDirectory", _config_path(paths.data_dir)),
                ("olcDbMaxSize", str(1 << 30)),  # the 10 MiB default fills at ~20k users
                ("olcDbIndex", "objectClass eq"),
                ("olcDbIndex", "uid eq"),
                ("olcDbIndex", "mail eq"),
                # Readers may list their whole tenant (directory sync), past the
                # default 500-entry size limit; everyone else keeps the default.
                *(
                    ("olcLimits", f'{{{i}}}dn.exact="{t.service_dn}" size=unlimited')
                    for i, t in enumerate(demo.tenants)
                ),
                *(("olcAccess", rule) for rule in _acl(demo.tenants)),
            ],
        ),
        entry(
            "olcOverlay={0}ppolicy,olcDatabase={1}mdb,cn=config",
            [
                ("objectClass", "olcOverlayConfig"),
                ("objectClass", "olcPPolicyConfig"),
                ("olcOverlay", "{0}ppolicy"),
                ("olcPPolicyDefault", DEFAULT_POLICY_DN),
                ("olcPPolicyHashCleartext", "TRUE"),
                # Without it a locked account's bind fails with no reason in the control.
                ("olcPPolicyUseLockout", "TRUE"),
            ],
        ),
    ]
    return "".join(parts)


# --- data ----------------------------------------------------------------------------


def _policy(dn: str, *, lockout_duration_s: int, is_service: bool = False) -> str:
    name = dn.split(",", 1)[0].split("=", 1)[1]
    attrs: list[tuple[str, str]] = [
        ("objectClass", "namedPolicy"),
        ("objectClass", "pwdPolicy"),
        ("cn", name),
        ("pwdAttribute", "userPassword"),
    ]
    if is_service:
        # Agents must not be locked out or expired by someone guessing their password:
        # the reader's password is long and random, and rotating it is an operator's job.
        attrs += [("pwdMaxAge", "0"), ("pwdLockout", "FALSE"), ("pwdMustChange", "FALSE")]
    else:
        attrs += [
            ("pwdMaxAge", str(MAX_AGE_S)),
            ("pwdGraceAuthNLimit", "0"),
            ("pwdLockout", "TRUE"),
            ("pwdMaxFailure", str(MAX_FAILURE)),
            ("pwdFailureCountInterval", str(FAILURE_COUNT_INTERVAL_S)),
            ("pwdLockoutDuration", str(lockout_duration_s)),
            ("pwdMustChange", "TRUE"),
            ("pwdAllowUserChange", "TRUE"),
        ]
    return entry(dn, attrs)


def _user(
    tenant: DemoTenant, uid: str, display_name: str, password: str, state: UserState, now: str
) -> str:
    given, _, surname = display_name.partition(" ")
    attrs: list[tuple[str, str]] = [
        ("objectClass", "inetOrgPerson"),
        ("uid", uid),
        ("cn", display_name),
        ("sn", surname or given),
        ("givenName", given),
        ("displayName", display_name),
        ("mail", f"{uid}@{tenant.domain}"),
        ("userPassword", ssha(password)),
    ]
    if state is UserState.PASSWORD_EXPIRED:
        attrs.append(("pwdChangedTime", EXPIRED_CHANGED_TIME))
    else:
        attrs.append(("pwdChangedTime", now))
    if state is UserState.MUST_CHANGE_PASSWORD:
        attrs.append(("pwdReset", "TRUE"))
    elif state is UserState.ACCOUNT_DISABLED:
        attrs.append(("pwdAccountLockedTime", PERMANENT_LOCK_TIME))
    elif state is UserState.ACCOUNT_LOCKED:
        attrs.append(("pwdAccountLockedTime", now))
        attrs.append(("pwdPolicySubentry", LOCKED_POLICY_DN))
    return entry(user_dn(tenant, uid), attrs)


def _tenant(tenant: DemoTenant, now: str) -> Iterator[str]:
    org = tenant.base_dn.split(",", 1)[0].split("=", 1)[1]
    yield entry(
        tenant.base_dn,
        [
            ("objectClass", "dcObject"),
            ("objectClass", "organization"),
            ("dc", org),
            ("o", tenant.name),
        ],
    )
    yield entry(
        tenant.service_dn,
        [
            ("objectClass", "applicationProcess"),
            ("objectClass", "simpleSecurityObject"),
            ("cn", tenant.service_dn.split(",", 1)[0].split("=", 1)[1]),
            ("description", "read-only account of the PTA agents"),
            ("userPassword", ssha(tenant.service_password)),
            ("pwdPolicySubentry", SERVICE_POLICY_DN),
        ],
    )
    yield entry(tenant.people_dn, [("objectClass", "organizationalUnit"), ("ou", "people")])
    user: DemoUser
    for user in tenant.users:
        yield _user(tenant, user.uid, user.display_name, user.password, user.state, now)
    for n in range(1, tenant.bulk_count + 1):
        uid = tenant.bulk_uid(n)
        yield _user(tenant, uid, f"Bulk {uid}", tenant.bulk_password, UserState.ACTIVE, now)


def data_ldif(demo: Demo, now: datetime) -> str:
    """The whole data database for ``slapadd -b dc=test``, parents before children."""
    stamp = generalized_time(now)
    parts = [
        entry(
            SUFFIX,
            [
                ("objectClass", "dcObject"),
                ("objectClass", "organization"),
                ("dc", "test"),
                ("o", "PTA test directory"),
            ],
        ),
        entry(POLICIES_DN, [("objectClass", "organizationalUnit"), ("ou", "policies")]),
        _policy(DEFAULT_POLICY_DN, lockout_duration_s=LOCKOUT_DURATION_S),
        _policy(LOCKED_POLICY_DN, lockout_duration_s=0),
        _policy(SERVICE_POLICY_DN, lockout_duration_s=0, is_service=True),
    ]
    for tenant in demo.tenants:
        parts.extend(_tenant(tenant, stamp))
    return "".join(parts)
