"""``pta-agent``: register, inspect, run, test, sync and unregister the on-premises agent.

The only module that reads the environment (through click ``envvar`` options and
``settings.load_settings``), configures logging, installs signal handlers and picks the
event loop (uvloop). Everything below takes its settings and arguments explicitly.

Exit codes: 0 success; 1 an operational failure (the message says what to do); 2 a usage
error (bad or conflicting options, a bad ``PTA_AGENT_*`` setting). Passwords come from
standard input only, are never echoed and never reach a log or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
import orjson
import structlog

from agent import __version__, logon, prompts, registration, runner, state, status_view
from agent.cloud import AgentGone, AgentView, CaClient, registered_ca_options
from agent.directory import DirectoryError, DirectoryMisconfigured, Verdict
from agent.errors import AgentError
from agent.https import ClientCertificateRefused, ServerNotTrusted, Unreachable
from agent.ldap_directory import LdapDirectory, LdapDirectorySettings
from agent.settings import (
    DEFAULT_STATE_DIR,
    Settings,
    SettingsInvalid,
    load_settings,
    name_directory_setting,
)
from agent.sync import SyncReport, UserSource, describe_skips, sync_once
from common import logs

log = structlog.get_logger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _OperationalFailure(click.ClickException):
    exit_code = 1


class _BadSetting(click.ClickException):
    exit_code = 2


# --------------------------------------------------------------------------- options


def _state_dir_option(command: Callable[_P, _R]) -> Callable[_P, _R]:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="PTA_AGENT_STATE_DIR",
        show_envvar=True,
        help=f"The agent's state folder.  [default: {DEFAULT_STATE_DIR}]",
    )(command)


def _login_options(command: Callable[_P, _R]) -> Callable[_P, _R]:
    command = click.option(
        "--password-stdin",
        is_flag=True,
        help="Read the admin's password from standard input (one line; prompted without "
        "echo on a terminal). Needs --username.",
    )(command)
    command = click.option(
        "--username",
        metavar="UPN",
        help="Sign in as this tenant admin with a password (for scripts). Needs --password-stdin.",
    )(command)
    return click.option(
        "--device-code",
        is_flag=True,
        help="Sign in in a browser with a code shown here (the default).",
    )(command)


def _https_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith("https://"):
        raise click.BadParameter("must be an https:// URL, e.g. https://ca.example.com")
    return value.rstrip("/") if value else value


def _tenant(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    value = value.strip()
    if not value or "/" in value or any(ch.isspace() for ch in value):
        raise click.BadParameter("give a verified domain name (contoso.com) or the tenant id")
    return value


# --------------------------------------------------------------------------- commands


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, "--version", prog_name="pta-agent")
def main() -> None:
    """The pass-through authentication agent: validates cloud sign-ins against this
    network's directory, connecting outbound only.

    \b
    First register the agent with a tenant admin's sign-in, check the directory
    settings, then run it:
      pta-agent register --tenant contoso.com --server https://ca.example.com \\
          --ca-bundle service-ca.pem
      pta-agent test-logon --username alice@contoso.com
      pta-agent sync --dry-run
      pta-agent run
      pta-agent status

    Settings come from options or PTA_AGENT_* environment variables (see each command's
    --help); PTA_AGENT_LOG_LEVEL, PTA_AGENT_HEARTBEAT_INTERVAL_S, PTA_AGENT_PREFETCH,
    PTA_AGENT_DRAIN_TIMEOUT_S and PTA_AGENT_HTTP_TIMEOUT_S tune the daemon. The directory
    (run, sync, test-logon) is set with PTA_AGENT_LDAP_URL, PTA_AGENT_LDAP_BIND_DN,
    PTA_AGENT_LDAP_BIND_PASSWORD_FILE (or PTA_AGENT_LDAP_BIND_PASSWORD),
    PTA_AGENT_LDAP_BASE_DN, PTA_AGENT_LDAP_DOMAIN, PTA_AGENT_LDAP_LOGIN_ATTRIBUTE,
    PTA_AGENT_LDAP_CA_FILE, PTA_AGENT_LDAP_KIND, PTA_AGENT_LDAP_POOL_SIZE and
    PTA_AGENT_LDAP_TIMEOUT_S; PTA_AGENT_SYNC_INTERVAL_S sets run's user sync period.
    """


@main.command(short_help="Register this host as an agent of a tenant.")
@click.option(
    "--tenant",
    required=True,
    callback=_tenant,
    metavar="DOMAIN|ID",
    help="The tenant to register in: a verified domain name or the tenant id.",
)
@click.option(
    "--server",
    envvar="PTA_AGENT_SERVER",
    show_envvar=True,
    required=True,
    callback=_https_url,
    metavar="CA_URL",
    help="URL of the PTA certificate authority (https://...).",
)
@click.option(
    "--ca-bundle",
    envvar="PTA_AGENT_CA_BUNDLE",
    show_envvar=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="PEM",
    help="The service TLS CA bundle that the CA's and STS's HTTPS certificates chain to. "
    "It is copied into the state folder and pinned for every later call.",
)
@_login_options
@_state_dir_option
@click.option(
    "--host",
    default=socket.gethostname,
    show_default="this host's name",
    help="Host name to register the agent under (shown to admins).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing registration in the state folder. The old agent stays in "
    "the cloud until an admin deletes it; prefer `pta-agent unregister` first.",
)
def register(
    tenant: str,
    server: str,
    ca_bundle: Path,
    device_code: bool,
    username: str | None,
    password_stdin: bool,
    state_dir: Path | None,
    host: str,
    force: bool,
) -> None:
    """Register this host as an agent of a tenant (needs a tenant admin's sign-in).

    Signs in to the tenant's STS (found through the CA) as an account with the
    hybrid_identity_admin role, creates an RSA-2048 key on this host (it never leaves it;
    mode 0600), sends a certificate request to the CA and saves the issued certificate
    in the state folder.

    \b
    Examples:
      pta-agent register --tenant contoso.com --server https://ca.example.com \\
          --ca-bundle /etc/pta/service-ca.pem
      echo "$ADMIN_PASSWORD" | pta-agent register --tenant contoso.com \\
          --server https://ca.example.com --ca-bundle service-ca.pem \\
          --username admin@contoso.com --password-stdin
    """
    settings = _settings(state_dir=state_dir)
    _configure_logs(settings)
    with _operational():  # before asking anyone to sign in
        state.ensure_can_register(settings.state_dir, force=force)
    login = prompts.login_method(device_code, username, password_stdin)
    with _operational():
        saved = _run(
            registration.register(
                state_dir=settings.state_dir,
                ca_url=server,
                ca_bundle=ca_bundle,
                tenant=tenant,
                host=host,
                version=__version__,
                login=login,
                force=force,
                timeout_s=settings.http_timeout_s,
            )
        )
    record = saved.record
    click.echo(f"Registered agent {record.agent_id}")
    click.echo(f"  tenant       {record.tenant_id} ({tenant})")
    click.echo(f"  host         {record.host}")
    click.echo(f"  certificate  valid until {status_view.when(saved.not_after)}")
    click.echo(f"  state folder {settings.state_dir}")
    click.echo(f"Start it with: pta-agent run --state-dir {settings.state_dir}")


@main.command(short_help="Show the registration and the cloud's view of the agent.")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def status(state_dir: Path | None, as_json: bool) -> None:
    """Show this agent's registration and how the cloud sees it.

    Reads the state folder (agent, tenant, certificate expiry), then asks the CA over
    mutual TLS (GET /agents/self) whether the agent is active and when it last sent a
    heartbeat. Exits 1 when the certificate has expired, the agent was deleted in the
    cloud, or the cloud cannot be reached.

    \b
    Examples:
      pta-agent status
      pta-agent status --state-dir /var/lib/pta-agent --json | jq .cloud.status
    """
    settings = _settings(state_dir=state_dir)
    _configure_logs(settings)
    with _operational():
        loaded = state.load(settings.state_dir)
    now = dt.datetime.now(dt.UTC)
    expired = loaded.not_after <= now
    view: AgentView | None = None
    problem = ""
    try:
        view = _run(_self_view(loaded, settings))
    except AgentGone as exc:
        problem = f"The cloud no longer accepts this agent. {exc}"
    except ClientCertificateRefused as exc:
        problem = str(exc)
    except (Unreachable, ServerNotTrusted) as exc:
        problem = f"The cloud's view is unknown: {exc}"
    except AgentError as exc:
        problem = f"The cloud's view is unknown: {exc}"
    if expired:
        problem = (
            f"The certificate expired at {status_view.when(loaded.not_after)}: register the agent "
            "again with `pta-agent register --force`. " + problem
        ).strip()
    if as_json:
        click.echo(orjson.dumps(status_view.status_document(loaded, view, problem, now)).decode())
    else:
        status_view.print_status(loaded, view, now)
    if problem:
        raise _OperationalFailure(problem)


@main.command(short_help="Delete the agent in the cloud and its local credentials.")
@_state_dir_option
@_login_options
def unregister(
    state_dir: Path | None, device_code: bool, username: str | None, password_stdin: bool
) -> None:
    """Delete this agent in the cloud, then its local credentials (needs a tenant admin).

    The CA revokes the agent's certificate and deletes its broker account; then
    agent.json, agent.key, agent.crt, pta-ca.pem and ca-bundle.pem are deleted from the
    state folder. Stop `pta-agent run` first. An agent the cloud no longer knows is
    removed locally all the same.

    \b
    Examples:
      pta-agent unregister
      echo "$ADMIN_PASSWORD" | pta-agent unregister --username admin@contoso.com \\
          --password-stdin
    """
    settings = _settings(state_dir=state_dir)
    _configure_logs(settings)
    login = prompts.login_method(device_code, username, password_stdin)
    with _operational():
        loaded = state.load(settings.state_dir)
        done = _run(registration.unregister(loaded, login=login, timeout_s=settings.http_timeout_s))
    if done.deleted_in_cloud:
        click.echo(f"Deleted agent {done.agent_id} in the cloud.")
    else:
        click.echo(f"The cloud no longer knew agent {done.agent_id}.")
    click.echo(f"Removed {len(done.removed)} files from {settings.state_dir}.")


@main.command(short_help="Run the agent until SIGTERM or Ctrl-C.")
@_state_dir_option
def run(state_dir: Path | None) -> None:
    """Run the agent until SIGTERM or Ctrl-C (for a service manager such as systemd).

    Opens the directory (PTA_AGENT_LDAP_* settings), bootstraps over mutual TLS for
    broker credentials, consumes the tenant's sign-in requests (reconnecting by itself),
    sends heartbeats, renews the broker credentials before they expire and syncs the
    directory's users every PTA_AGENT_SYNC_INTERVAL_S seconds (0: never). Logs go to
    standard error, JSON when not on a terminal; PTA_AGENT_LOG_LEVEL sets the level.

    \b
    Examples:
      pta-agent run
      PTA_AGENT_STATE_DIR=/srv/pta-agent PTA_AGENT_LOG_LEVEL=debug pta-agent run
    """
    settings = _settings(state_dir=state_dir)
    with _operational():
        state.load(settings.state_dir)  # "register first" comes before any other advice
    _directory_settings(settings)  # a bad directory setting fails before anything starts
    logs.configure(level=settings.log_level, service="agent")
    with _operational():
        try:
            _run(_daemon(settings), uvloop=True)
        except AgentError as exc:
            log.error("agent_failed", error=str(exc), kind=type(exc).__name__)
            raise


@main.command(name="test-logon", short_help="Check a username and password against the directory.")
@click.option(
    "--username",
    required=True,
    metavar="UPN",
    help="The user to check, as they sign in (alice@contoso.com).",
)
@_state_dir_option
def test_logon(username: str, state_dir: Path | None) -> None:
    """Check one username and password against the directory, as a sign-in would.

    The troubleshooter for the directory settings: uses only the PTA_AGENT_LDAP_*
    settings (no registration, no cloud: --state-dir is accepted like everywhere, not
    needed), validates exactly as `pta-agent run` does and
    prints the result, what it means and what to do. The password is read from standard
    input (prompted without echo on a terminal; one line from a pipe) and never shown.

    Exit codes: 0 the password is valid; 1 the directory said no (wrong password,
    expired, locked, ...); 2 the directory could not be asked, or a usage or settings
    error.

    \b
    Examples:
      pta-agent test-logon --username alice@contoso.com
      printf '%s\\n' "$PASSWORD" | pta-agent test-logon --username alice@contoso.com
    """
    settings = _settings(state_dir=state_dir)
    _configure_logs(settings)
    directory = _directory_settings(settings)
    password = prompts.read_password(source="test-logon")
    result = _run(_test_logon(directory, username, password))
    click.echo(logon.format_result(result))
    sys.exit(logon.exit_code(result.verdict))


@main.command(short_help="Send the directory's users to the cloud.")
@_state_dir_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Read the directory and print what would be sent; send nothing (needs no registration).",
)
def sync(state_dir: Path | None, dry_run: bool) -> None:
    """Send the directory's users to the cloud, so that they can sign in.

    Reads every user under PTA_AGENT_LDAP_BASE_DN as the service account (sign-in name
    from PTA_AGENT_LDAP_LOGIN_ATTRIBUTE, immutable id, display name; never a password)
    and sends them to the CA over mutual TLS. Users deleted from the directory are
    deleted in the cloud; a renamed user keeps its cloud identity. `pta-agent run` does
    the same every PTA_AGENT_SYNC_INTERVAL_S seconds.

    \b
    Examples:
      pta-agent sync --dry-run
      pta-agent sync --state-dir /var/lib/pta-agent
    """
    settings = _settings(state_dir=state_dir)
    _configure_logs(settings)
    directory = _directory_settings(settings)
    with _operational():
        try:
            source = UserSource(directory)
            if dry_run:
                report = _run(sync_once(source, None, dry_run=True))
            else:
                loaded = state.load(settings.state_dir)
                loaded.ensure_valid(dt.datetime.now(dt.UTC))
                report = _run(_sync(source, loaded, settings))
        except DirectoryMisconfigured as exc:
            raise AgentError(message=name_directory_setting(exc.detail)) from exc
    _print_sync(report, directory)


# --------------------------------------------------------------------------- helpers


async def _daemon(settings: Settings) -> None:
    """``runner.run`` with SIGTERM and SIGINT turned into its stop event."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.run(settings, stop=stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _test_logon(
    settings: LdapDirectorySettings, username: str, password: str
) -> logon.LogonResult:
    """Open the directory and validate once; a directory that cannot be opened is shown
    as the verdict of its status (directory_unavailable, agent_error, ...)."""
    started = time.perf_counter()
    try:
        directory = await LdapDirectory.open(settings)
    except DirectoryError as exc:
        detail = name_directory_setting(exc.detail) if exc.detail else str(exc)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return logon.LogonResult(username, Verdict(exc.status, detail), elapsed_ms)
    async with directory:
        return await logon.timed_logon(directory, username, password)


async def _sync(source: UserSource, loaded: state.Registration, settings: Settings) -> SyncReport:
    async with CaClient(**registered_ca_options(loaded, timeout_s=settings.http_timeout_s)) as ca:
        return await sync_once(source, ca)


def _print_sync(report: SyncReport, directory: LdapDirectorySettings) -> None:
    source = report.source
    skipped = describe_skips(source.skipped)
    click.echo(
        f"Read {len(source.users)} users from {directory.url} under {directory.base_dn} "
        f"({source.entries} entries" + (f"; skipped {skipped})" if skipped else ")")
    )
    if report.dry_run:
        click.echo("Dry run: nothing was sent to the cloud.")
        return
    click.echo(
        f"Synced to the cloud in {report.batches} batches: {report.upserted} upserted, "
        f"{report.deleted} deleted ({report.elapsed_ms / 1000:.1f} s)."
    )


async def _self_view(loaded: state.Registration, settings: Settings) -> AgentView:
    async with CaClient(**registered_ca_options(loaded, timeout_s=settings.http_timeout_s)) as ca:
        return await ca.self_view()


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsInvalid as exc:
        raise _BadSetting(str(exc)) from exc


def _directory_settings(settings: Settings) -> LdapDirectorySettings:
    """The checked directory settings, or exit 2 naming the variable to fix."""
    try:
        return settings.directory_settings()
    except SettingsInvalid as exc:
        raise _BadSetting(str(exc)) from exc


def _configure_logs(settings: Settings) -> None:
    """One-shot commands log warnings only, unless PTA_AGENT_LOG_LEVEL asks for more:
    their result is the text they print."""
    level = settings.log_level if "log_level" in settings.model_fields_set else "WARNING"
    logs.configure(level=level, service="agent")


@contextlib.contextmanager
def _operational() -> Iterator[None]:
    """Turn AgentError and file system errors into exit code 1 with their message."""
    try:
        yield
    except AgentError as exc:
        raise _OperationalFailure(str(exc)) from exc
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise _OperationalFailure(
            f"{exc.strerror or exc}{where}: check the state folder's permissions and free space."
        ) from exc


def _run(coroutine: Coroutine[Any, Any, _R], *, uvloop: bool = False) -> _R:
    """Run a coroutine on a fresh event loop (uvloop for the daemon when installed)."""
    factory = _uvloop_factory() if uvloop else None
    with asyncio.Runner(loop_factory=factory) as loop_runner:
        return loop_runner.run(coroutine)


@functools.cache
def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # optional: not on Windows
    except ImportError:
        return None
    return uvloop.new_event_loop
