"""A private PostgreSQL 15 cluster on its own loopback port.

initdb, pg_ctl and postgres refuse to run as root (docs/servers.md), so as root the cluster
belongs to the stack user, `ptastack`, and lives in that user's folder outside the
checkout (infra.stackuser), which it can reach wherever the checkout is. Otherwise it
runs as the invoking user in `<state>/postgres/`. After start, `configure` creates the
application role and database and applies the migrations.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import asyncpg

from common import migrate
from infra import stackuser
from infra.server import Health, Layout, Program, ServerNotReady, StackError
from infra.waiting import wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = stackuser.OS_USER
APP_ROLE = "pta"
APP_DB = "pta"


def _list_item(path: Path) -> str:
    """One item of a PostgreSQL list setting (unix_socket_directories): double-quoted,
    so that a comma or a leading space in the path stays part of it."""
    return '"' + str(path).replace('"', '""') + '"'


class Postgres:
    """The private cloud database of one stack."""

    name = "postgres"

    def __init__(
        self,
        layout: Layout,
        password: str,
        *,
        durable: bool = True,
        directory: Path | None = None,
    ) -> None:
        self.layout = layout
        # As root: the stack user's folder, prepared by infra.stackuser (owned by it).
        self.dir = directory or layout.server_dir("postgres")
        self.in_stack_user_dir = directory is not None
        self.data = self.dir / "data"
        self.sockets = self.dir / "run"
        self.password = password  # the same password for the superuser and the app role
        self.durable = durable
        self.port = layout.ports.postgres
        self.is_root = os.geteuid() == 0

    # -- DSNs --------------------------------------------------------------------------

    def dsn(self, database: str = APP_DB, user: str = APP_ROLE) -> str:
        return (
            f"postgresql://{quote(user, safe='')}:{quote(self.password, safe='')}"
            f"@127.0.0.1:{self.port}/{quote(database, safe='')}"
        )

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres", "postgres")

    # -- Server protocol ---------------------------------------------------------------

    def _as_owner(self) -> list[str]:
        return stackuser.as_stack_user() if self.is_root else []

    def prepare(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        if self.data.exists():
            shutil.rmtree(self.data)  # a half-made cluster from an interrupted first start
        if self.in_stack_user_dir:
            # The stack user's folder: infra.stackuser made dir and its socket folder; the
            # password file goes in the root-owned folder above, where no link can be
            # planted, and is handed over by descriptor.
            pwfile = self.dir.parent / "initdb.pw"
            pwfile.unlink(missing_ok=True)
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            user = stackuser.ensure_os_user()
            os.fchown(fd, user.pw_uid, user.pw_gid)
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
        else:
            self.sockets.mkdir(parents=True, exist_ok=True)
            pwfile = self.dir / "initdb.pw"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            if self.is_root:  # a cluster in the state folder, made before issue 9
                user = stackuser.ensure_os_user()
                for path in (self.dir, self.sockets, pwfile):
                    os.chown(path, user.pw_uid, user.pw_gid)
            self.dir.chmod(0o700)
        try:
            result = subprocess.run(
                [
                    *self._as_owner(),
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd="/",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed: {result.stderr.strip()[-2000:]}")

    def programs(self) -> list[Program]:
        settings = [
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={_list_item(self.sockets)}",
            "-c", "max_connections=200",
            "-c", "log_min_messages=warning",
        ]  # fmt: skip
        if not self.durable:
            # The test stack is thrown away: trade crash safety for speed.
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off"]  # fmt: skip
        return [
            Program(
                name="postgres",
                command=[
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    *settings,
                ],
                user=OS_USER if self.is_root else None,
                directory=str(self.dir),
                stop_signal="INT",  # fast shutdown
                stop_wait_s=30,
            )
        ]

    async def wait_ready(self, timeout_s: float) -> None:
        """Ready = `SELECT 1` as the superuser over TCP with SCRAM."""

        async def answers() -> str:
            try:
                conn = await asyncpg.connect(self.admin_dsn, timeout=2)
                try:
                    await conn.fetchval("SELECT 1")
                finally:
                    await conn.close()
            except Exception as exc:  # not up yet: any failure means "try again"
                return f"{type(exc).__name__}: {exc}"
            return ""

        last = await wait_until(answers, timeout_s=timeout_s, interval_s=0.1)
        if not last:
            return
        raise ServerNotReady(
            f"PostgreSQL not ready after {timeout_s:.0f} s ({last}); "
            f"see {self.layout.logs_dir / 'postgres.log'}"
        )

    async def configure(self) -> None:
        """Create the app role and database (idempotent) and apply the migrations."""
        conn = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE):
                # Identifiers cannot be bound parameters; both are constants of this module.
                await conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN CREATEDB")
            # ALTER ROLE ... PASSWORD takes no parameters either; quote_literal does the quoting
            # inside the server so the password never needs escaping here.
            quoted = await conn.fetchval("SELECT quote_literal($1::text)", self.password)
            await conn.execute(f"ALTER ROLE {APP_ROLE} PASSWORD {quoted}")
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", APP_DB):
                await conn.execute(f"CREATE DATABASE {APP_DB} OWNER {APP_ROLE}")
        finally:
            await conn.close()
        app = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            await migrate.apply(app)
        finally:
            await app.close()

    async def health(self) -> Health:
        endpoint = f"postgresql://127.0.0.1:{self.port}"
        try:
            conn = await asyncpg.connect(self.dsn(), timeout=3)
            try:
                version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
            finally:
                await conn.close()
            return Health(self.name, True, endpoint, f"schema v{version}")
        except Exception as exc:
            return Health(self.name, False, endpoint, type(exc).__name__)
