"""The sign-in outcomes table, the validator's order of checks (with fakes), the new
settings and home-realm discovery's document."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from common.envelope import kid_for
from common.wire import Reply, Status
from sts.agent_keys import ActiveAgent
from sts.dispatcher import DispatchOutcome, DispatchRequest, DispatchResult, LateReply
from sts.errors import OAuthError
from sts.lockout import LockoutPolicy, LockoutStore
from sts.passwords import AgentPasswordValidator, RoundTrips, StsOutcome, error_for
from sts.queries import LockoutRow, SignInRecord, SignInUserRow
from sts.settings import StsSettings, settings_error_message
from sts.signin import SignInContext
from sts.tenants import Tenant
from sts.userrealm import domain_of, realm_document

# docs/design.md §5: the STS answer column, row by row.
DESIGN_TABLE: dict[str, tuple[str, int | None]] = {
    "success": ("", None),
    "invalid_credentials": ("invalid_grant", 50126),
    "password_expired": ("invalid_grant", 50144),
    "must_change_password": ("invalid_grant", 50055),
    "account_locked": ("invalid_grant", 50053),
    "account_disabled": ("invalid_grant", 50057),
    "account_expired": ("invalid_grant", 50057),
    "logon_hours": ("invalid_grant", 50053),
    "invalid_username": ("invalid_grant", 80004),
    "directory_unavailable": ("temporarily_unavailable", 80007),
    "directory_timeout": ("temporarily_unavailable", 80002),
    "decrypt_failed": ("temporarily_unavailable", 80010),
    "key_not_found": ("temporarily_unavailable", 80011),
    "agent_error": ("temporarily_unavailable", 80005),
    "no_agent": ("temporarily_unavailable", 80001),
    "timeout": ("temporarily_unavailable", 80002),
    "forged_reply": ("temporarily_unavailable", 80003),
    "repeated_password": ("invalid_grant", 50126),  # a recent wrong password, not sent
    "smart_lockout": ("invalid_grant", 50053),
    "user_not_found": ("invalid_grant", 50034),
    "empty_password": ("invalid_grant", 50126),
    "password_refused": ("invalid_grant", 50126),
}


@pytest.mark.parametrize(("result", "expected"), DESIGN_TABLE.items())
def test_every_result_maps_to_the_design_table(
    result: str, expected: tuple[str, int | None]
) -> None:
    error = error_for(result)
    if expected[1] is None:
        assert error is None
    else:
        assert error is not None and (error.error, error.code) == expected


def test_the_table_covers_every_status_and_outcome() -> None:
    assert {str(s) for s in Status} | {str(o) for o in StsOutcome} == set(DESIGN_TABLE)
    with pytest.raises(ValueError):
        error_for("something_else")


# --------------------------------------------------------------------------- the validator

TENANT = Tenant(str(uuid.uuid4()), "Contoso", block_legacy_auth=False)
USER = SignInUserRow(uuid.uuid4(), "alice@contoso.test", "Alice", "entry-1", None)
CONTEXT = SignInContext("corr-1", "client-1", "127.0.0.1", "password_grant")
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
AGENT = ActiveAgent(str(uuid.uuid4()), kid_for(_KEY), _KEY, not_after=4e9)


@dataclass
class FakeDb:
    user: SignInUserRow | None = USER
    lockout: LockoutRow = field(default_factory=LockoutRow)
    cleared: int = 0

    async def sign_in_user(self, _tenant: uuid.UUID, _username: str) -> SignInUserRow | None:
        if self.user is None:
            return None
        return SignInUserRow(
            self.user.id, self.user.username, self.user.display_name, self.user.immutable_id,
            self.lockout,
        )  # fmt: skip

    async def update_lockout(
        self, _t: uuid.UUID, _u: str, mutate: Callable[[LockoutRow], LockoutRow]
    ) -> LockoutRow:
        self.lockout = mutate(self.lockout)
        return self.lockout

    async def read_lockout(self, _t: uuid.UUID, _u: str) -> LockoutRow:
        return self.lockout

    async def clear_lockout(self, _t: uuid.UUID, _u: str) -> None:
        self.cleared += 1
        self.lockout = LockoutRow()


@dataclass
class FakeDispatcher:
    status: Status | None = Status.SUCCESS
    outcome: DispatchOutcome = DispatchOutcome.REPLIED
    requests: list[DispatchRequest] = field(default_factory=list)

    async def dispatch(self, request: DispatchRequest) -> DispatchResult:
        self.requests.append(request)
        if self.outcome is not DispatchOutcome.REPLIED or self.status is None:
            return DispatchResult(self.outcome, detail="fake")
        env = request.envelope
        reply = Reply(1, env.request_id, AGENT.id, AGENT.kid, self.status, "", 1.0, "")
        return DispatchResult(DispatchOutcome.REPLIED, reply)


@dataclass
class FakeKeys:
    agents: tuple[ActiveAgent, ...] = (AGENT,)

    async def for_tenant(self, _tenant_id: str) -> tuple[ActiveAgent, ...]:
        return self.agents


@dataclass
class FakeLog:
    rows: list[SignInRecord] = field(default_factory=list)

    def add(self, record: SignInRecord) -> None:
        self.rows.append(record)


def validator(db: FakeDb, dispatcher: FakeDispatcher, log: FakeLog, **kw: Any) -> Any:
    lockout = LockoutStore(db, LockoutPolicy(threshold=2), key=b"k" * 32)  # type: ignore[arg-type]
    return AgentPasswordValidator(
        db=db,  # type: ignore[arg-type]
        agent_keys=kw.get("keys", FakeKeys()),  # type: ignore[arg-type]
        dispatcher=dispatcher,
        lockout=lockout,
        sign_in_log=log,  # type: ignore[arg-type]
        request_timeout_s=10,
        clock=kw.get("clock", lambda: 1000.0),
    )


async def attempt(v: Any, secret: str = "pw") -> tuple[str, int | None]:  # noqa: S107
    try:
        user = await v.validate(TENANT, "Alice@Contoso.test", secret, CONTEXT)
    except OAuthError as exc:
        return exc.error, exc.code
    assert user.username == "alice@contoso.test" and user.agent_id == AGENT.id
    return "success", 0


async def test_success_returns_the_user_and_logs_one_row() -> None:
    db, disp, log = FakeDb(), FakeDispatcher(), FakeLog()
    assert await attempt(validator(db, disp, log)) == ("success", 0)
    (request,) = disp.requests
    assert request.envelope.username == "alice@contoso.test"
    assert request.envelope.expires_at == 1010.0
    assert request.recipients == {AGENT.id: AGENT.kid}
    (row,) = log.rows
    assert (row.result, row.code, str(row.agent_id), row.flow) == (
        "success", 0, AGENT.id, "password_grant",
    )  # fmt: skip
    assert row.correlation_id == "corr-1" and row.user_id == USER.id


@pytest.mark.parametrize(
    ("setup", "expected", "result"),
    [
        ({"user": None}, ("invalid_grant", 50034), "user_not_found"),
        ({"password": ""}, ("invalid_grant", 50126), "empty_password"),
        ({"keys": FakeKeys(())}, ("temporarily_unavailable", 80001), "no_agent"),
        ({"locked": True}, ("invalid_grant", 50053), "smart_lockout"),
    ],
    ids=["unknown user", "empty password", "no active agent", "locked"],
)
async def test_refusals_before_any_dispatch(
    setup: dict[str, Any], expected: tuple[str, int], result: str
) -> None:
    db, disp, log = FakeDb(), FakeDispatcher(), FakeLog()
    if "user" in setup:
        db.user = setup["user"]
    if setup.get("locked"):
        db.lockout = LockoutRow(locked_until=dt.datetime.fromtimestamp(1030, dt.UTC), lockouts=1)
    v = validator(db, disp, log, keys=setup.get("keys", FakeKeys()))
    assert await attempt(v, setup.get("password", "pw")) == expected
    assert disp.requests == []
    assert [r.result for r in log.rows] == [result]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (DispatchOutcome.NO_AGENT, 80001),
        (DispatchOutcome.TIMEOUT, 80002),
        (DispatchOutcome.FORGED, 80003),
    ],
)
async def test_dispatch_outcomes(outcome: DispatchOutcome, expected: int) -> None:
    disp = FakeDispatcher(outcome=outcome)
    assert await attempt(validator(FakeDb(), disp, FakeLog())) == (
        "temporarily_unavailable", expected,
    )  # fmt: skip


@pytest.mark.parametrize("outcome", [DispatchOutcome.TIMEOUT, DispatchOutcome.FORGED])
async def test_unanswered_attempts_keep_their_place_until_it_expires(
    outcome: DispatchOutcome,
) -> None:
    """Finding 10: the agent may still be binding; a late reply settles it."""
    db = FakeDb()
    v = validator(db, FakeDispatcher(status=None, outcome=outcome), FakeLog())
    await attempt(v, "whatever")
    assert (db.lockout.failures, db.lockout.in_flight) == (0, 1)
    assert db.lockout.in_flight_until == dt.datetime.fromtimestamp(1000 + 10 + 5, dt.UTC)
    late = LateReply(TENANT.id, USER.username, Status.INVALID_CREDENTIALS, 1010.0)
    await v._settle_late(late)
    assert (db.lockout.failures, db.lockout.in_flight) == (1, 0)


async def test_the_agents_own_directory_timeout_is_neutral() -> None:
    db = FakeDb()
    await attempt(validator(db, FakeDispatcher(status=Status.DIRECTORY_TIMEOUT), FakeLog()))
    assert (db.lockout.failures, db.lockout.in_flight) == (0, 0)


async def test_wrong_passwords_lock_and_success_clears() -> None:
    db, log = FakeDb(), FakeLog()
    wrong = FakeDispatcher(status=Status.INVALID_CREDENTIALS)
    v = validator(db, wrong, log)
    assert await attempt(v, "wrong-1") == ("invalid_grant", 50126)
    # A repeat: neither counted nor sent (the directory would count it: finding 12).
    assert await attempt(v, "wrong-1") == ("invalid_grant", 50126)
    assert db.lockout.failures == 1
    assert len(wrong.requests) == 1
    assert [r.result for r in log.rows[-1:]] == ["repeated_password"]
    assert await attempt(v, "wrong-2") == ("invalid_grant", 50126)  # the 2nd distinct: locked
    assert await attempt(v, "right") == ("invalid_grant", 50053)
    assert len(wrong.requests) == 2
    db.lockout = LockoutRow(failures=1)
    assert await attempt(validator(db, FakeDispatcher(), log)) == ("success", 0)
    assert db.lockout == LockoutRow()  # cleared (an update, so places in flight survive)
    assert not any(b"wrong" in bytes(fp) for fp in db.lockout.recent_failures)


# --------------------------------------------------------------------------- settings


def make_settings(tmp_path: Path, **env: Any) -> StsSettings:
    return StsSettings(
        public_url="https://sts.example.com",
        postgres_dsn="postgresql://pta@127.0.0.1:5/pta",
        signing_key_dir=tmp_path,
        **env,
    )


def test_sign_in_setting_defaults(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    assert s.amqp_url is None and s.instance_id == "sts"
    assert s.request_timeout_s == 10 and s.lockout_threshold == 10
    assert s.lockout_duration_s == 60 and s.extra_listen == ()
    assert s.signin_log_batch == 200 and s.lockout_secret is None


def test_a_lockout_below_the_directory_starts(tmp_path: Path) -> None:
    s = make_settings(
        tmp_path,
        lockout_threshold=4,
        lockout_duration_s=120,
        directory_lockout_threshold=5,
        directory_lockout_window_s=60,
    )
    assert s.lockout_policy().failures_within(60 + 10 + 10) == 4


def test_extra_listen_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTA_STS_EXTRA_LISTEN", "127.0.0.1:443, [::1]:8443,")
    s = make_settings(tmp_path)
    assert s.extra_listen == (("127.0.0.1", 443), ("::1", 8443))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"extra_listen": "127.0.0.1"}, "PTA_STS_EXTRA_LISTEN: '127.0.0.1' is not host:port"),
        ({"extra_listen": "h:99999"}, "PTA_STS_EXTRA_LISTEN"),
        ({"amqp_url": "http://x/pta"}, "PTA_STS_AMQP_URL: must be an amqp://"),
        ({"amqp_url": "amqps://sts:pw@h:1/pta"}, "PTA_STS_AMQP_URL: must name no vhost"),
        ({"amqp_url": "amqps://h:1"}, "PTA_STS_AMQP_URL: must name the STS's broker user"),
        ({"instance_id": "a b"}, "PTA_STS_INSTANCE_ID: must be 1 to 64"),
        ({"request_timeout_s": 0}, "PTA_STS_REQUEST_TIMEOUT_S"),
        ({"request_timeout_s": 121}, "PTA_STS_REQUEST_TIMEOUT_S"),
        ({"lockout_threshold": 0}, "PTA_STS_LOCKOUT_THRESHOLD"),
        ({"lockout_secret": "short"}, "PTA_STS_LOCKOUT_SECRET: must be at least 32"),
        ({"lockout_duration_s": 600, "lockout_max_duration_s": 60},
         "PTA_STS_LOCKOUT_MAX_DURATION_S must be at least PTA_STS_LOCKOUT_DURATION_S"),
        # Finding 10: the stack's old numbers, cloud window = slapd's 60 s window.
        ({"lockout_threshold": 4, "lockout_duration_s": 60,
          "directory_lockout_threshold": 5, "directory_lockout_window_s": 60},
         "smart lockout would not trip before the directory's"),
        ({"lockout_threshold": 5, "lockout_duration_s": 600,
          "directory_lockout_threshold": 5, "directory_lockout_window_s": 60},
         "smart lockout would not trip before the directory's"),
        ({"directory_lockout_threshold": 5}, "PTA_STS_DIRECTORY_LOCKOUT_WINDOW_S must be set"),
        ({"directory_lockout_threshold": 5, "directory_lockout_window_s": 0},
         "PTA_STS_DIRECTORY_LOCKOUT_WINDOW_S"),
    ],
)  # fmt: skip
def test_bad_sign_in_settings_are_named(tmp_path: Path, env: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_settings(tmp_path, **env)
    message = settings_error_message(info.value)
    assert expected in message
    assert "amqp://" not in message or "must be" in message  # the URL itself is not echoed


def test_secret_settings_do_not_show(tmp_path: Path) -> None:
    s = make_settings(tmp_path, lockout_secret="s" * 40, amqp_url="amqps://u:pw@h:1")
    assert "s" * 40 not in repr(s)


# --------------------------------------------------------------------------- userrealm


@pytest.mark.parametrize(
    ("username", "domain"),
    [
        ("alice@Contoso.TEST", "contoso.test"),
        ("a@b@contoso.test", "contoso.test"),
        ("alice", None),
        ("alice@", None),
        ("alice@not a domain", None),
        (f"alice@{uuid.uuid4()}", None),
        ("x" * 300 + "@contoso.test", None),
    ],
)
def test_domain_of(username: str, domain: str | None) -> None:
    assert domain_of(username) == domain


def test_realm_documents_have_entras_shape() -> None:
    managed = realm_document(domain="contoso.test", tenant_name="Contoso", cloud_instance_name="h")
    assert managed == {
        "ver": "1.0", "account_type": "Managed", "domain_name": "contoso.test",
        "federation_brand_name": "Contoso", "cloud_instance_name": "h",
        "cloud_audience_urn": "urn:federation:MicrosoftOnline",
    }  # fmt: skip
    unknown = realm_document(domain=None, tenant_name=None, cloud_instance_name="h")
    assert unknown == {"ver": "1.0", "account_type": "Unknown", "cloud_instance_name": "h"}


# --------------------------------------------------------------------------- timing


def test_round_trips_are_bounded_and_fall_back_to_any_tenant() -> None:
    trips = RoundTrips(per_tenant=3, tenants=2)
    assert trips.sample("a") is None  # nothing measured yet: no delay
    for seconds in (1.0, 2.0, 3.0, 4.0):
        trips.add("a", seconds)
    assert {trips.sample("a") for _ in range(200)} == {2.0, 3.0, 4.0}
    assert trips.sample("unseen") in (2.0, 3.0, 4.0)  # any tenant's
    trips.add("b", 9.0)
    trips.add("c", 9.0)  # a third tenant: "a", answered least recently, is forgotten
    assert trips.sample("b") == 9.0 and trips.sample("c") == 9.0
    assert trips.sample("a") in (3.0, 4.0, 9.0)  # from the shared pool now


async def test_an_unknown_user_waits_like_an_answered_sign_in() -> None:
    v = validator(FakeDb(user=None), FakeDispatcher(), FakeLog())
    v.round_trips.add(TENANT.id, 0.2)
    started = time.perf_counter()
    assert await attempt(v) == ("invalid_grant", 50034)
    assert time.perf_counter() - started >= 0.19
