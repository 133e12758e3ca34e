"""The pta-agent command line (agent.cli) through click's CliRunner.

The cloud is replaced by fakes at the seams ``registration.acquire_admin_token``,
``registration.CaClient`` and ``cli._self_view``; the tests cover options, usage errors,
exit codes, what is printed and written, and that a password read from standard input is
never printed or logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from click.testing import CliRunner, Result

from agent import cli, prompts, registration, runner
from agent.cloud import AgentNotFound, AgentView, IssuedCertificate
from agent.directory import DirectoryMisconfigured, DirectoryUnavailable, FakeDirectory
from agent.https import Unreachable
from agent.signin import AccessToken, DeviceCode, Login, OAuthError, PasswordLogin
from agent.sync import DirectoryUser, SourceResult
from common import pki
from common.wire import Status
from tests.support.agent_state import NOW, Issued, issue, saved_registration

PASSWORD = "Pa55-marker-7f3c9e"
SERVICE_PASSWORD = "svc-marker-51d0"
DIRECTORY_ENV = {
    "PTA_AGENT_LDAP_URL": "ldap://127.0.0.1:1",
    "PTA_AGENT_LDAP_BIND_DN": "cn=reader,dc=contoso,dc=test",
    "PTA_AGENT_LDAP_BIND_PASSWORD": SERVICE_PASSWORD,
    "PTA_AGENT_LDAP_BASE_DN": "ou=people,dc=contoso,dc=test",
    "PTA_AGENT_LDAP_DOMAIN": "contoso.test",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in os.environ:
        if name.startswith("PTA_AGENT_"):
            monkeypatch.delenv(name, raising=False)
    yield
    # The commands configure logging with cached loggers: later modules must not inherit.
    structlog.reset_defaults()


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.main, list(args), input=input, env=env)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "service-ca.pem"
    path.write_bytes(issue().service_ca_pem)
    return path


def register_args(state_dir: Path, bundle: Path, *extra: str) -> list[str]:
    return [
        "register", "--tenant", "contoso.test", "--server", "https://ca.test:8443",
        "--ca-bundle", str(bundle), "--state-dir", str(state_dir), *extra,
    ]  # fmt: skip


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command", ["register", "status", "unregister", "run", "test-logon", "sync"]
)
def test_each_command_explains_itself_with_an_example(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert f"pta-agent {command}" in result.output
    assert "--state-dir" in result.output and "PTA_AGENT_STATE_DIR" in result.output


def test_main_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("register", "status", "unregister", "run", "test-logon", "sync"):
        assert command in result.output


def test_register_help_names_the_environment_variables() -> None:
    output = invoke("register", "-h").output
    assert "PTA_AGENT_SERVER" in output and "PTA_AGENT_CA_BUNDLE" in output
    assert "--password-stdin" in output and "--device-code" in output


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device-code", "--username", "admin@contoso.test", "--password-stdin"], "use one"),
        (["--device-code", "--password-stdin"], "use one"),
        (["--password-stdin"], "--password-stdin needs --username"),
        (["--username", "admin@contoso.test"], "never from the command line"),
    ],
)
def test_conflicting_sign_in_options_are_usage_errors(
    tmp_path: Path, bundle: Path, extra: list[str], message: str
) -> None:
    result = invoke(*register_args(tmp_path / "s", bundle, *extra), input=f"{PASSWORD}\n")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "s").exists()


def test_register_needs_tenant_server_and_bundle(tmp_path: Path) -> None:
    result = invoke("register", "--state-dir", str(tmp_path))
    assert result.exit_code == 2 and "--tenant" in result.output


def test_server_must_be_https(tmp_path: Path, bundle: Path) -> None:
    args = register_args(tmp_path, bundle)
    args[args.index("--server") + 1] = "http://ca.test"
    result = invoke(*args)
    assert result.exit_code == 2 and "https://" in result.output


def test_missing_bundle_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(*register_args(tmp_path, tmp_path / "nope.pem"))
    assert result.exit_code == 2 and "nope.pem" in result.output


def test_empty_password_on_stdin_is_refused(tmp_path: Path, bundle: Path) -> None:
    args = register_args(tmp_path, bundle, "--username", "admin@contoso.test", "--password-stdin")
    result = invoke(*args, input="\n")
    assert result.exit_code == 2 and "no password" in result.output


def test_bad_setting_in_the_environment_exits_2(tmp_path: Path) -> None:
    result = invoke("status", "--state-dir", str(tmp_path), env={"PTA_AGENT_PREFETCH": "0"})
    assert result.exit_code == 2 and "PTA_AGENT_PREFETCH" in result.output


def test_options_come_from_the_environment(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    async def fake_register(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise Unreachable("stop here")

    monkeypatch.setattr(registration, "register", fake_register)
    env = {
        "PTA_AGENT_SERVER": "https://ca.env.test",
        "PTA_AGENT_CA_BUNDLE": str(bundle),
        "PTA_AGENT_STATE_DIR": str(tmp_path / "env-state"),
    }
    result = invoke("register", "--tenant", "contoso.test", "--device-code", env=env)
    assert result.exit_code == 1
    assert seen["ca_url"] == "https://ca.env.test"
    assert seen["ca_bundle"] == bundle
    assert seen["state_dir"] == tmp_path / "env-state"


# --------------------------------------------------------------------------- register


class FakeCa:
    """Signs the CSR with a test PTA CA, as the real CA would."""

    def __init__(self, issued: Issued) -> None:
        self.issued = issued
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *_: Any, **__: Any) -> FakeCa:
        return self

    async def __aenter__(self) -> FakeCa:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def register(self, token: str, csr_pem: bytes, **kwargs: Any) -> IssuedCertificate:
        self.calls.append({"token": token, **kwargs})
        csr = pki.validate_csr(csr_pem)
        ca_cert, ca_key = pki.make_ca("Test PTA CA", now=NOW, lifetime_days=3650)
        cert = pki.sign_agent_csr(
            csr, issuer_cert=ca_cert, issuer_key=ca_key, tenant_id=self.issued.tenant_id,
            agent_id=self.issued.agent_id, now=NOW, lifetime_days=180,
        )  # fmt: skip
        return IssuedCertificate(
            agent_id=self.issued.agent_id,
            tenant_id=self.issued.tenant_id,
            certificate=pki.certificate_pem(cert).decode(),
            ca_certificate=pki.certificate_pem(ca_cert).decode(),
            not_after=cert.not_valid_after_utc,
            kid=pki.spki_sha256_kid(csr.public_key()),
        )

    async def delete_agent(self, token: str, agent_id: str) -> None:
        self.calls.append({"token": token, "deleted": agent_id})
        if self.issued.agent_id != agent_id:
            raise AgentNotFound(status=404)


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Login]]:
    """Admin sign-ins the commands asked for: (ca_url, tenant, login)."""
    seen: list[tuple[str, str, Login]] = []

    async def fake_acquire(ca_url: str, tenant: str, login: Login, **_: Any) -> AccessToken:
        seen.append((ca_url, tenant, login))
        return AccessToken(value="admin-token", expires_in_s=3600)

    monkeypatch.setattr(registration, "acquire_admin_token", fake_acquire)
    return seen


def test_register_writes_the_state_folder_and_prints_the_agent(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, logins: list[Any]
) -> None:
    issued = issue()
    ca = FakeCa(issued)
    monkeypatch.setattr(registration, "CaClient", ca)
    state_dir = tmp_path / "state"
    args = register_args(state_dir, bundle, "--username", "admin@contoso.test")
    result = invoke(*args, "--password-stdin", "--host", "dc-01", input=f"{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert issued.agent_id in result.stdout and issued.tenant_id in result.stdout
    assert "valid until" in result.stdout
    ((ca_url, tenant, login),) = logins
    assert (ca_url, tenant) == ("https://ca.test:8443", "contoso.test")
    assert login == PasswordLogin(username="admin@contoso.test", password=PASSWORD)
    assert ca.calls[0]["token"] == "admin-token" and ca.calls[0]["host"] == "dc-01"
    assert ca.calls[0]["tenant_id"] is None  # a domain: the CA takes the token's tenant
    assert stat.S_IMODE((state_dir / "agent.key").stat().st_mode) == 0o600
    assert (state_dir / "ca-bundle.pem").read_bytes() == bundle.read_bytes()
    assert PASSWORD not in result.output


def test_register_refuses_an_existing_registration(
    tmp_path: Path, bundle: Path, logins: list[Any]
) -> None:
    saved_registration(tmp_path)
    before = (tmp_path / "agent.key").read_bytes()
    result = invoke(*register_args(tmp_path, bundle, "--device-code"))
    assert result.exit_code == 1
    assert "pta-agent unregister" in result.output and "--force" in result.output
    assert logins == []  # refused before anyone is asked to sign in
    assert (tmp_path / "agent.key").read_bytes() == before


def test_register_force_replaces_it(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, logins: list[Any]
) -> None:
    saved_registration(tmp_path)
    issued = issue()
    monkeypatch.setattr(registration, "CaClient", FakeCa(issued))
    result = invoke(*register_args(tmp_path, bundle, "--device-code", "--force"))
    assert result.exit_code == 0, result.output
    assert issued.agent_id in (tmp_path / "agent.json").read_text()


def test_password_is_never_printed_or_logged(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def refusing_sts(ca_url: str, tenant: str, login: Login, **_: Any) -> AccessToken:
        assert isinstance(login, PasswordLogin) and login.password == PASSWORD
        # Even logging the login object must not reveal the password.
        structlog.get_logger("agent.test").debug("sign_in_attempt", login=login)
        logging.getLogger("agent.test").debug("sign in %r", login)
        raise OAuthError(
            error="invalid_grant",
            description="AADSTS50126: Error validating credentials due to invalid username "
            "or password.",
            codes=(50126,),
            status=400,
        )

    monkeypatch.setattr(registration, "acquire_admin_token", refusing_sts)
    caplog.set_level(logging.DEBUG)
    structlog.configure(cache_logger_on_first_use=False)
    args = register_args(tmp_path, bundle, "--username", "admin@contoso.test", "--password-stdin")
    result = invoke(*args, input=f"{PASSWORD}\n", env={"PTA_AGENT_LOG_LEVEL": "DEBUG"})
    structlog.reset_defaults()
    assert result.exit_code == 1
    assert "AADSTS50126: Error validating credentials" in result.output
    assert "username and password" in result.output  # what to do
    assert "sign_in_attempt" in result.stderr  # the debug log was written ...
    assert PASSWORD not in result.output  # ... and neither it nor the error holds it
    assert PASSWORD not in caplog.text
    assert not (tmp_path / "agent.key").exists()


def test_device_code_message_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    prompts.show_device_code(
        DeviceCode(
            device_code="d", user_code="WXYZ-1234", verification_uri="https://sts.test/device",
            expires_in_s=900, interval_s=5,
            message="To sign in, open https://sts.test/device and enter WXYZ-1234.",
        )
    )  # fmt: skip
    captured = capsys.readouterr()
    assert "WXYZ-1234" in captured.err and "https://sts.test/device" in captured.err
    assert "15 min" in captured.err and captured.out == ""


# --------------------------------------------------------------------------- status


def _view(monkeypatch: pytest.MonkeyPatch, outcome: AgentView | Exception) -> None:
    async def fake(*_: Any) -> AgentView:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(cli, "_self_view", fake)


def test_status_shows_local_state_and_the_clouds_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    _view(monkeypatch, AgentView(status="active", last_heartbeat_at=NOW))
    result = invoke("status", "--state-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert issued.agent_id in result.output and issued.tenant_id in result.output
    assert "days left" in result.output
    assert "active, last heartbeat" in result.output


def test_status_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    _view(monkeypatch, AgentView.model_validate({"status": "inactive", "version": "0.1.0"}))
    result = invoke("status", "--state-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    document = orjson.loads(result.stdout)
    assert document["agent_id"] == issued.agent_id
    assert document["certificate"]["expired"] is False
    assert document["cloud"] == {
        "reachable": True, "status": "inactive", "last_heartbeat_at": None,
        "cert_not_after": None, "version": "0.1.0",
    }  # fmt: skip
    assert document["ok"] is True


def test_status_when_the_cloud_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved_registration(tmp_path)
    _view(monkeypatch, Unreachable("the CA at https://ca.test:8443: Connection refused."))
    result = invoke("status", "--state-dir", str(tmp_path), "--json")
    assert result.exit_code == 1
    document = orjson.loads(result.stdout)
    assert document["cloud"] == {"reachable": False}
    assert "Connection refused" in document["problem"]
    assert "firewall" in result.stderr


def test_status_when_the_agent_was_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved_registration(tmp_path)
    _view(monkeypatch, AgentNotFound(status=401))
    result = invoke("status", "--state-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no longer accepts this agent" in result.output
    assert "pta-agent register --force" in result.output


def test_status_without_registration(tmp_path: Path) -> None:
    result = invoke("status", "--state-dir", str(tmp_path))
    assert result.exit_code == 1 and "pta-agent register" in result.output


# --------------------------------------------------------------------------- unregister


def test_unregister_deletes_in_the_cloud_then_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logins: list[Any]
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa(issued)
    monkeypatch.setattr(registration, "CaClient", ca)
    result = invoke("unregister", "--state-dir", str(tmp_path), "--device-code")
    assert result.exit_code == 0, result.output
    assert f"Deleted agent {issued.agent_id}" in result.output
    assert ca.calls == [{"token": "admin-token", "deleted": issued.agent_id}]
    assert logins[0][:2] == ("https://ca.test:8443", issued.tenant_id)
    assert list(tmp_path.iterdir()) == []


def test_unregister_of_an_agent_the_cloud_forgot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logins: list[Any]
) -> None:
    saved_registration(tmp_path)
    monkeypatch.setattr(registration, "CaClient", FakeCa(issue()))  # knows another agent
    result = invoke("unregister", "--state-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "no longer knew" in result.output
    assert list(tmp_path.iterdir()) == []


def test_unregister_keeps_local_files_when_the_cloud_was_not_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved_registration(tmp_path)

    async def down(*_: Any, **__: Any) -> AccessToken:
        raise Unreachable("the CA at https://ca.test:8443: Connection refused.")

    monkeypatch.setattr(registration, "acquire_admin_token", down)
    result = invoke("unregister", "--state-dir", str(tmp_path))
    assert result.exit_code == 1 and "Connection refused" in result.output
    assert (tmp_path / "agent.json").exists()


# --------------------------------------------------------------------------- run


def test_run_without_registration_exits_1(tmp_path: Path) -> None:
    result = invoke("run", "--state-dir", str(tmp_path))
    structlog.reset_defaults()
    assert result.exit_code == 1
    assert "pta-agent register" in result.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_turns_signals_into_the_stop_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: signal.Signals
) -> None:
    stopped: list[signal.Signals] = []

    async def fake_run(settings: Any, *, stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signum)  # as a service manager would
        async with asyncio.timeout(5):
            await stop.wait()
        stopped.append(signum)

    monkeypatch.setattr(runner, "run", fake_run)
    saved_registration(tmp_path, issue())
    result = invoke("run", "--state-dir", str(tmp_path), env=DIRECTORY_ENV)
    structlog.reset_defaults()
    assert result.exit_code == 0, result.output
    assert stopped == [signum]


def test_run_needs_the_directory_settings(tmp_path: Path) -> None:
    saved_registration(tmp_path, issue())
    env = {**DIRECTORY_ENV, "PTA_AGENT_LDAP_URL": "http://dc1.corp.test"}
    result = invoke("run", "--state-dir", str(tmp_path), env=env)
    structlog.reset_defaults()
    assert result.exit_code == 2
    assert "PTA_AGENT_LDAP_URL" in result.output and "scheme" in result.output
    assert SERVICE_PASSWORD not in result.output


# --------------------------------------------------------------------------- test-logon


class OpenedDirectory(FakeDirectory):
    """What ``LdapDirectory.open`` returns in these tests (a context manager, as it is)."""

    async def __aenter__(self) -> OpenedDirectory:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


@pytest.fixture
def fake_directory(monkeypatch: pytest.MonkeyPatch) -> OpenedDirectory:
    directory = OpenedDirectory(
        users={
            "alice@contoso.test": (PASSWORD, Status.SUCCESS),
            "erin@contoso.test": (PASSWORD, Status.PASSWORD_EXPIRED),
        }
    )

    async def open_(settings: Any) -> OpenedDirectory:
        return directory

    monkeypatch.setattr(cli.LdapDirectory, "open", open_)
    return directory


@pytest.mark.parametrize(
    ("username", "password", "code", "status"),
    [
        ("alice@contoso.test", PASSWORD, 0, "success"),
        ("alice@contoso.test", "wrong-" + PASSWORD, 1, "invalid_credentials"),
        ("erin@contoso.test", PASSWORD, 1, "password_expired"),
        ("nobody@contoso.test", PASSWORD, 1, "invalid_credentials"),
    ],
)
def test_test_logon_prints_the_verdict_and_exits_with_its_code(
    fake_directory: OpenedDirectory, username: str, password: str, code: int, status: str
) -> None:
    result = invoke("test-logon", "--username", username, input=f"{password}\n", env=DIRECTORY_ENV)
    assert result.exit_code == code, result.output
    assert f"Result:   {status}" in result.output and "To do:" in result.output
    assert password not in result.output and SERVICE_PASSWORD not in result.output
    assert fake_directory.calls == [username] and fake_directory.is_closed


def test_test_logon_needs_no_registration_nor_cloud(
    fake_directory: OpenedDirectory, tmp_path: Path
) -> None:
    result = invoke(
        "test-logon", "--username", "alice@contoso.test", "--state-dir", str(tmp_path / "none"),
        input=f"{PASSWORD}\n", env=DIRECTORY_ENV,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_test_logon_when_the_directory_cannot_be_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    async def open_(settings: Any) -> OpenedDirectory:
        raise DirectoryUnavailable("(url ldap://127.0.0.1:1: cannot connect: refused)")

    monkeypatch.setattr(cli.LdapDirectory, "open", open_)
    result = invoke(
        "test-logon", "--username", "alice@contoso.test", input=f"{PASSWORD}\n",
        env=DIRECTORY_ENV,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "directory_unavailable" in result.output and "cannot connect" in result.output
    assert PASSWORD not in result.output


def test_test_logon_names_a_misconfigured_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    async def open_(settings: Any) -> OpenedDirectory:
        raise DirectoryMisconfigured("base_dn: 'ou=nope' does not exist.")

    monkeypatch.setattr(cli.LdapDirectory, "open", open_)
    result = invoke(
        "test-logon", "--username", "alice@contoso.test", input=f"{PASSWORD}\n",
        env=DIRECTORY_ENV,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "PTA_AGENT_LDAP_BASE_DN: 'ou=nope' does not exist." in result.output


@pytest.mark.parametrize(
    ("env", "stdin", "message"),
    [
        (DIRECTORY_ENV, "\n", "no password"),
        ({}, f"{PASSWORD}\n", "PTA_AGENT_LDAP_URL"),
    ],
)
def test_test_logon_usage_errors(
    fake_directory: OpenedDirectory, env: dict[str, str], stdin: str, message: str
) -> None:
    result = invoke("test-logon", "--username", "alice@contoso.test", input=stdin, env=env)
    assert result.exit_code == 2 and message in result.output
    assert fake_directory.calls == []


def test_test_logon_never_takes_the_password_as_an_option() -> None:
    result = invoke("test-logon", "--username", "a@contoso.test", "--password", PASSWORD)
    assert result.exit_code == 2 and "No such option" in result.output


# --------------------------------------------------------------------------- sync


class ListedSource:
    def __init__(self, settings: Any) -> None:
        self.settings = settings

    async def read(self) -> SourceResult:
        users = (DirectoryUser("alice@contoso.test", "5f0c4d1e-0000-4000-8000-000000000001", "A"),)
        return SourceResult(users, {"other_domain": 2}, 3)


def test_sync_dry_run_reads_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cli, "UserSource", ListedSource)
    result = invoke("sync", "--dry-run", "--state-dir", str(tmp_path), env=DIRECTORY_ENV)
    assert result.exit_code == 0, result.output
    assert "Read 1 users from ldap://127.0.0.1:1 under ou=people,dc=contoso,dc=test" in (
        result.output
    )
    assert "skipped 2 other_domain" in result.output and "Dry run" in result.output


def test_sync_needs_a_registration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "UserSource", ListedSource)
    result = invoke("sync", "--state-dir", str(tmp_path), env=DIRECTORY_ENV)
    assert result.exit_code == 1 and "pta-agent register" in result.output


def test_sync_needs_the_directory_settings(tmp_path: Path) -> None:
    result = invoke("sync", "--state-dir", str(tmp_path), env={"PTA_AGENT_LDAP_URL": "ldap://x"})
    assert result.exit_code == 2 and "PTA_AGENT_LDAP_BIND_DN" in result.output
