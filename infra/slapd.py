"""The stack's private OpenLDAP directory: slapd 2.5 with the ppolicy overlay.

It stands in for the on-premises Active Directory the agents validate passwords against.
Everything lives in ``<state>/slapd/`` (mode 0700)::

    slapd.d/    cn=config, built offline by ``slapadd -n0`` (its presence = prepared)
    data/       the mdb database, seeded offline by ``slapadd -b dc=test``
    tls/        self-signed certificate for 127.0.0.1 (key mode 0600) for ldaps
    ldapi       the unix socket (root may ``ldapsearch -Y EXTERNAL -H <ldapi_url>``)

The directory tree, ACLs, password policies and how each demo user state is seeded are
described in ``infra.ldif``. slapd listens on ``ldap://127.0.0.1:<ports.ldap>``,
``ldaps://127.0.0.1:<ports.ldaps>`` and the ldapi socket, and runs in the foreground under
the supervisor with ``-d none``: any ``-d`` keeps slapd from detaching, and ``none`` (a
non-zero level no message is tagged with) prints only the always-on messages (startup
errors, "slapd starting", "slapd stopped") instead of one line per operation.

Locked vs disabled: both answer a bind with the ppolicy error ``accountLocked``; the
service account reads ``pwdAccountLockedTime``: ``000001010000Z`` (common.ppolicy.
PERMANENT_LOCK_TIME) means disabled, a real timestamp means locked out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import ldap3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra import ldif
from infra.demo import Demo, DemoTenant
from infra.server import Health, Layout, Program, ServerNotReady, StackError
from infra.waiting import wait_until

_SUBPROCESS_TIMEOUT_S = 60
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
_SCHEMAS = ("core", "cosine", "nis", "inetorgperson", "namedobject")
_HASH_RE = re.compile(r"\{[A-Z0-9.-]+\}[A-Za-z0-9+/=]+")


class DirectorySetupFailed(StackError):
    """slapadd could not build the private directory; fix the cause and run `up` again
    (a partial build is discarded)."""


class SocketPathTooLong(StackError):
    """The state folder's path is too long for slapd's ldapi unix socket (107 bytes at
    most); use a shorter state folder."""


def _message(error: type[StackError]) -> str:
    """An error class's docstring as one line (the default message, docs/contributing.md §5)."""
    return " ".join((error.__doc__ or "").split())


def _binary(name: str) -> str:
    """A server binary: /usr/sbin is often not on a non-root PATH, so look there too."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise StackError(f"{name} is not installed: apt-get install slapd ldap-utils")
    return found


class Slapd:
    """The private slapd of one stack (implements infra.server.Server)."""

    name = "slapd"

    def __init__(
        self,
        layout: Layout,
        demo: Demo,
        *,
        debug_level: str = "none",
        schema_dir: Path = Path("/etc/ldap/schema"),
        module_dir: str = "/usr/lib/ldap",
    ) -> None:
        self.layout = layout
        self.demo = demo
        self.debug_level = debug_level  # e.g. "stats" to log every operation
        self.schema_dir = schema_dir
        self.module_dir = module_dir
        self.home = layout.server_dir("slapd")

    # --- where things are ------------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        return self.home / "slapd.d"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def tls_cert_path(self) -> Path:
        """The self-signed server certificate; clients use it as their CA file."""
        return self.home / "tls" / "cert.pem"

    @property
    def tls_key_path(self) -> Path:
        return self.home / "tls" / "key.pem"

    @property
    def socket_path(self) -> Path:
        return self.home / "ldapi"

    @property
    def log_path(self) -> Path:
        """Where the supervisor writes slapd's output."""
        return self.layout.logs_dir / "slapd.log"

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.layout.ports.ldap}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.layout.ports.ldaps}"

    @property
    def ldapi_url(self) -> str:
        return "ldapi://" + quote(str(self.socket_path), safe="")

    # --- prepare ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Build cn=config and seed the data offline, unless already done (idempotent).

        The config is built in ``slapd.d.new`` and renamed to ``slapd.d`` last, so a
        failed or interrupted run leaves no half-built directory behind. Raises
        DirectorySetupFailed (with slapadd's stderr, secrets removed) or StackError.
        """
        self._check_socket_path()
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        if not self.tls_key_path.exists():
            self._write_certificate()
        if self.config_dir.exists():
            return
        staging = self.home / "slapd.d.new"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        staging.mkdir(mode=0o700)
        self.data_dir.mkdir(mode=0o700)
        paths = ldif.ConfigPaths(
            data_dir=self.data_dir,
            pid_file=self.home / "slapd.pid",
            args_file=self.home / "slapd.args",
            tls_cert=self.tls_cert_path,
            tls_key=self.tls_key_path,
        )
        try:
            schemas = [(self.schema_dir / f"{name}.ldif").read_text() for name in _SCHEMAS]
        except OSError as exc:
            raise StackError(f"slapd's schema files are missing ({exc}): reinstall slapd") from exc
        config = ldif.config_ldif(paths, self.demo, schemas, module_path=self.module_dir)
        slapadd = _binary("slapadd")
        self._slapadd([slapadd, "-n0", "-F", str(staging)], config, "cn=config")
        data = ldif.data_ldif(self.demo, datetime.now(UTC))
        # -q: skip consistency checks we do not need on a freshly generated LDIF.
        self._slapadd([slapadd, "-q", "-F", str(staging), "-b", ldif.SUFFIX], data, "data")
        staging.rename(self.config_dir)

    def _check_socket_path(self) -> None:
        if len(os.fsencode(self.socket_path)) > _SOCKET_PATH_MAX:
            raise SocketPathTooLong(
                f"{_message(SocketPathTooLong)} ({len(os.fsencode(self.socket_path))} bytes: "
                f"{self.socket_path})"
            )

    def _slapadd(self, command: list[str], text: str, what: str) -> None:
        """Run slapadd with the LDIF on stdin (never written to disk)."""
        try:
            done = subprocess.run(
                command,
                input=text.encode(),
                capture_output=True,
                timeout=_SUBPROCESS_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DirectorySetupFailed(
                f"slapadd ({what}) did not finish within {_SUBPROCESS_TIMEOUT_S} s"
            ) from exc
        if done.returncode != 0:
            raise DirectorySetupFailed(
                f"{_message(DirectorySetupFailed)} slapadd ({what}) exited with "
                f"{done.returncode}: {self._scrub(done.stderr.decode(errors='replace')).strip()}"
            )

    def _scrub(self, text: str) -> str:
        """Remove every demo secret and password hash from a tool's output."""
        secrets = [self.demo.ldap_admin_password]
        for tenant in self.demo.tenants:
            secrets += [tenant.service_password, tenant.bulk_password]
            secrets += [user.password for user in tenant.users]
        for secret in secrets:
            text = text.replace(secret, "***")
        return _HASH_RE.sub("{***}", text)

    def _write_certificate(self) -> None:
        """A self-signed P-256 certificate for 127.0.0.1 and localhost, key mode 0600."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pta-stack slapd")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=825))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        tls_dir = self.tls_key_path.parent
        tls_dir.mkdir(mode=0o700, exist_ok=True)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        partial = tls_dir / "key.pem.new"
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        self.tls_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        partial.rename(self.tls_key_path)  # the key's presence marks the pair complete

    # --- run -------------------------------------------------------------------------

    def programs(self) -> list[Program]:
        """slapd in the foreground (``-d``) on loopback ldap, ldaps and the ldapi socket."""
        self._check_socket_path()
        urls = f"{self.url}/ {self.ldaps_url}/ {self.ldapi_url}"
        return [
            Program(
                name=self.name,
                command=[
                    _binary("slapd"),
                    "-d",
                    self.debug_level,
                    "-h",
                    urls,
                    "-F",
                    str(self.config_dir),
                ],
                directory=str(self.home),
                stop_signal="TERM",
                stop_wait_s=10,
            )
        ]

    async def wait_ready(self, timeout_s: float) -> None:
        """Return once a tenant's service account can bind; else raise ServerNotReady."""
        tenant = self.demo.tenants[0]

        async def binds() -> str:
            return await asyncio.to_thread(self._try_bind, tenant, 1)

        last = await wait_until(binds, timeout_s=timeout_s, interval_s=0.02, max_interval_s=0.5)
        if not last:
            return
        raise ServerNotReady(
            f"slapd did not accept a bind at {self.url} within {timeout_s:g} s ({last}); "
            f"see {self.log_path}"
        )

    def _try_bind(self, tenant: DemoTenant, timeout_s: int, *, search: bool = False) -> str:
        """Bind as the tenant's reader (and read its base entry); "" or what went wrong.

        Timeouts are whole seconds: ldap3 packs receive_timeout into a C long on Linux.
        """
        server = ldap3.Server(self.url, connect_timeout=timeout_s, get_info=ldap3.NONE)
        conn = ldap3.Connection(
            server,
            user=tenant.service_dn,
            password=tenant.service_password,
            receive_timeout=timeout_s,
            raise_exceptions=False,
        )
        try:
            if not conn.bind():
                return f"bind as {tenant.service_dn}: {conn.result.get('description')}"
            if search and not conn.search(
                tenant.base_dn, "(objectClass=*)", ldap3.BASE, attributes=["dc"]
            ):
                return f"search of {tenant.base_dn}: {conn.result.get('description')}"
            return ""
        except ldap3.core.exceptions.LDAPException as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(ldap3.core.exceptions.LDAPException):
                conn.unbind()

    async def configure(self) -> None:
        """Check that every tenant's reader binds and sees its subtree (idempotent).

        Raises StackError when it cannot, e.g. when <state>/slapd was seeded from another
        demo.json.
        """
        for tenant in self.demo.tenants:
            problem = await asyncio.to_thread(self._try_bind, tenant, 5, search=True)
            if problem:
                raise StackError(
                    f"the directory does not match the demo data ({problem}); "
                    f"delete {self.home} and run `up` again"
                )

    async def health(self) -> Health:
        """A bind and a base search as the first tenant's reader; never raises."""
        started = time.perf_counter()
        try:
            problem = await asyncio.wait_for(
                asyncio.to_thread(self._try_bind, self.demo.tenants[0], 2, search=True),
                timeout=5.0,
            )
        except Exception as exc:  # health reports, it never raises
            problem = f"{type(exc).__name__}: {exc}"
        elapsed_ms = (time.perf_counter() - started) * 1000
        return Health(
            name=self.name,
            is_healthy=not problem,
            endpoint=self.url,
            detail=problem or f"bind + search in {elapsed_ms:.1f} ms",
        )
