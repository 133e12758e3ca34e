"""The load tool's pure parts: percentiles, histogram, intervals, arrivals, mix, URL guard,
answer classification and the figures table of `make bench`."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from bench import engine, stats
from bench.engine import LoadConfig, LoadError, classify
from bench.run import figures, markdown
from bench.target import (
    BulkUsers,
    NamedUser,
    TargetError,
    TenantInfo,
    is_loopback_host,
    load_stack,
    require_loopback,
)
from bench.users import Kind, MixError, UserPicker, parse_mix

# --------------------------------------------------------------------------- percentiles


def test_percentiles_of_1_to_100_are_the_ranks() -> None:
    samples = [float(i) for i in range(100, 0, -1)]  # unsorted on purpose
    assert stats.percentiles(samples, [0, 1, 50, 90, 99, 99.9, 100]) == [
        1.0,
        1.0,
        50.0,
        90.0,
        99.0,
        100.0,  # nearest rank: p99.9 of 100 samples is the worst one
        100.0,
    ]


def test_p999_of_1000_samples_is_rank_999_not_the_max() -> None:
    # 99.9/100*1000 is 999.0000000000001 in binary floating point: must not round up.
    ordered = [float(i) for i in range(1, 1001)]
    assert stats.percentile(ordered, 99.9) == 999.0
    assert stats.percentile(ordered, 99) == 990.0


@pytest.mark.parametrize("q", [0, 50, 99.9, 100])
def test_one_sample_is_every_percentile(q: float) -> None:
    assert stats.percentile([7.5], q) == 7.5


def test_percentile_is_always_an_observed_value() -> None:
    ordered = [1.0, 10.0]
    assert stats.percentile(ordered, 50) == 1.0  # rank ceil(1.0) = 1, no interpolation
    assert stats.percentile(ordered, 50.1) == 10.0


def test_ties_and_bimodal_samples() -> None:
    samples = [1.0] * 90 + [1000.0] * 10
    p50, p90, p91, p99 = stats.percentiles(samples, [50, 90, 91, 99])
    assert (p50, p90, p91, p99) == (1.0, 1.0, 1000.0, 1000.0)


@pytest.mark.parametrize("q", [-0.1, 100.1, math.nan])
def test_percentile_out_of_range_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        stats.percentile([1.0], q)


def test_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="no samples"):
        stats.percentile([], 50)


def test_summary_of_known_samples() -> None:
    summary = stats.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary is not None
    assert (summary.count, summary.min, summary.max) == (5, 1.0, 5.0)
    assert summary.mean == 3.0
    assert (summary.p50, summary.p90, summary.p99, summary.p99_9) == (3.0, 5.0, 5.0, 5.0)
    assert set(summary.as_dict()) == {"count", "min", "mean", "p50", "p90", "p99", "p99_9", "max"}


def test_summary_of_nothing_is_none() -> None:
    assert stats.summarize([]) is None


# --------------------------------------------------------------------------- histogram


def test_histogram_buckets_are_upper_bound_inclusive() -> None:
    h = stats.Histogram(bounds=(1.0, 10.0))
    for value in (0.0, 1.0, 1.0001, 10.0, 10.5, 1e9):
        h.add(value)
    assert h.as_rows() == [("1", 2), ("10", 2), ("+inf", 2)]
    assert h.total == 6


def test_histogram_refuses_unsorted_bounds() -> None:
    with pytest.raises(ValueError, match="increasing"):
        stats.Histogram(bounds=(10.0, 1.0))


# --------------------------------------------------------------------------- intervals


def test_per_interval_bins_by_completion_time() -> None:
    completions = [(0.1, 10.0, False), (0.9, 30.0, True), (1.5, 20.0, False), (3.2, 5.0, False)]
    rows = stats.per_interval(completions, width_s=1.0, span_s=3.0)
    assert [r.completed for r in rows] == [2, 1, 1]  # the late one lands in the last bin
    assert [r.errors for r in rows] == [1, 0, 0]
    assert rows[0].p50_ms == 10.0 and rows[0].max_ms == 30.0
    assert [r.start_s for r in rows] == [0.0, 1.0, 2.0]


def test_per_interval_keeps_empty_intervals() -> None:
    rows = stats.per_interval([(2.5, 1.0, False)], width_s=1.0, span_s=3.0)
    assert [r.completed for r in rows] == [0, 0, 1]
    assert rows[0].p50_ms is None


# --------------------------------------------------------------------------- arrivals


def test_uniform_arrivals_are_exactly_spaced() -> None:
    offsets = list(stats.arrival_offsets(200.0, 1.0))
    assert len(offsets) == 200
    assert offsets[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert all(gap == pytest.approx(0.005, abs=1e-12) for gap in gaps)
    assert offsets[-1] < 1.0


def test_uniform_arrivals_do_not_drift_over_a_long_run() -> None:
    # Each offset is i/rate, not a running sum: the 600,000th arrival is on time.
    *_, last = stats.arrival_offsets(1000.0, 600.0)
    assert last == 599.999


def test_arrivals_stop_at_the_request_budget() -> None:
    assert len(list(stats.arrival_offsets(1000.0, 60.0, max_requests=30))) == 30


def test_poisson_arrivals_have_the_asked_mean_rate_and_are_seeded() -> None:
    a = list(stats.arrival_offsets(500.0, 20.0, arrivals="poisson", seed=7))
    b = list(stats.arrival_offsets(500.0, 20.0, arrivals="poisson", seed=7))
    assert a == b
    assert len(a) == pytest.approx(10_000, rel=0.05)
    gaps = [y - x for x, y in itertools.pairwise(a)]
    assert statistics.mean(gaps) == pytest.approx(1 / 500, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(1 / 500, rel=0.1)  # exponential: sd = mean
    assert a == sorted(a) and a[-1] < 20.0


@pytest.mark.parametrize(("rate", "duration"), [(0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0), (1.0, 0)])
def test_bad_rate_or_duration_is_refused(rate: float, duration: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        next(stats.arrival_offsets(rate, duration))


# --------------------------------------------------------------------------- mix


def _tenant(bulk_count: int = 100) -> TenantInfo:
    return TenantInfo(
        id="00000000-0000-4000-8000-000000000001",
        name="Contoso",
        domain="contoso.test",
        base_dn="dc=contoso,dc=test",
        client_id="00000000-0000-4000-8000-000000000002",
        users=(
            NamedUser("alice@contoso.test", "pa", "active"),
            NamedUser("erin@contoso.test", "pe", "password_expired"),
            NamedUser("luke@contoso.test", "pl", "account_locked"),
        ),
        bulk=BulkUsers(pattern="user{n:04d}@contoso.test", count=bulk_count, password="bulk-pw"),
        service_dn="cn=reader",
        service_password="x",
    )


def test_mix_parsing() -> None:
    mix = parse_mix(" good=90, wrong=10 ,expired=0, must-change=0")
    assert mix.as_dict() == {"good": 90, "wrong": 10}  # weight 0 dropped
    assert mix.share(Kind.WRONG) == 0.1
    assert str(mix) == "good=90,wrong=10"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("good=90,bogus=10", "unknown kind"),
        ("good=50,good=50", "twice"),
        ("good=-1", "non-negative integer"),
        ("good=1.5", "non-negative integer"),
        ("good", "non-negative integer"),
        ("good=0", "at least one"),
        ("", "at least one"),
    ],
)
def test_bad_mix_is_refused(text: str, message: str) -> None:
    with pytest.raises(MixError, match=message):
        parse_mix(text)


def test_mix_is_followed_exactly_and_evenly() -> None:
    picker = UserPicker(_tenant(), parse_mix("good=90,wrong=10"))
    kinds = [picker.next().kind for _ in range(100)]
    assert Counter(kinds) == {Kind.GOOD: 90, Kind.WRONG: 10}
    # Spread, not bunched: every window of 10 requests holds exactly one wrong password.
    assert all(kinds[i : i + 10].count(Kind.WRONG) == 1 for i in range(0, 100, 10))


def test_good_and_wrong_users_are_disjoint_and_spread() -> None:
    picker = UserPicker(_tenant(100), parse_mix("good=50,wrong=50"))
    attempts = [picker.next() for _ in range(100)]
    good = {a.username for a in attempts if a.kind is Kind.GOOD}
    wrong = [a.username for a in attempts if a.kind is Kind.WRONG]
    assert not good & set(wrong)
    assert set(wrong) == {f"user{n:04d}@contoso.test" for n in range(76, 101)}  # last quarter
    assert max(Counter(wrong).values()) == 2
    assert all(a.password == "bulk-pw" for a in attempts if a.kind is Kind.GOOD)
    assert all(a.password != "bulk-pw" for a in attempts if a.kind is Kind.WRONG)


def test_wrong_passwords_are_capped_per_user_then_sent_as_good() -> None:
    picker = UserPicker(_tenant(8), parse_mix("wrong=100"), max_wrong_per_user=2)
    attempts = [picker.next() for _ in range(10)]
    # 8 bulk users: 2 in the wrong slice, 2 attempts each, then good sign-ins.
    assert [a.kind for a in attempts].count(Kind.WRONG) == 4
    assert picker.wrong_capped == 6
    assert max(picker.wrong_counts.values()) == 2
    assert [a.username for a in picker.heal_list()] == [
        "user0007@contoso.test",
        "user0008@contoso.test",
    ]


@pytest.mark.parametrize("cap", [0, 4])
def test_wrong_cap_must_stay_below_the_directory_lockout(cap: int) -> None:
    with pytest.raises(MixError, match="max wrong"):
        UserPicker(_tenant(), parse_mix("good=1"), max_wrong_per_user=cap)


def test_named_state_users_and_missing_state() -> None:
    picker = UserPicker(_tenant(), parse_mix("expired=1,locked=1"))
    assert {picker.next().username for _ in range(4)} == {"erin@contoso.test", "luke@contoso.test"}
    with pytest.raises(MixError, match="account_disabled"):
        UserPicker(_tenant(), parse_mix("disabled=1"))


def test_expected_answers_per_kind() -> None:
    picker = UserPicker(_tenant(), parse_mix("good=1,wrong=1,unknown=1,expired=1,locked=1"))
    expected = {a.kind: a.expected for a in (picker.next() for _ in range(5))}
    assert expected[Kind.GOOD] == {"success"}
    assert "AADSTS50126" in expected[Kind.WRONG]
    assert "AADSTS50034" in expected[Kind.UNKNOWN]
    assert "AADSTS50144" in expected[Kind.EXPIRED]
    assert expected[Kind.LOCKED] == {"AADSTS50053"}


# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b'{"access_token": "x", "token_type": "Bearer"}', "success"),
        (400, b'{"error": "invalid_grant", "error_codes": [50126]}', "AADSTS50126"),
        (503, b'{"error": "temporarily_unavailable", "error_codes": [80002]}', "AADSTS80002"),
        (200, b'{"token_type": "Bearer"}', "HTTP 200 (no token)"),
        (500, b"<html>oops</html>", "HTTP 500 (not JSON)"),
        (502, b'{"error": "bad_gateway"}', "HTTP 502 (no error_codes)"),
        (400, b"[1, 2]", "HTTP 400 (not a JSON object)"),
        (400, b'{"error_codes": ["50126"]}', "HTTP 400 (no error_codes)"),
    ],
)
def test_classify(status: int, body: bytes, outcome: str) -> None:
    assert classify(status, body) == outcome


# --------------------------------------------------------------------------- URL guard


@pytest.mark.parametrize(
    ("host", "is_loopback"),
    [
        ("127.0.0.1", True),
        ("127.12.0.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("10.0.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 -- a host name under test, nothing binds
        ("128.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_hosts(host: str | None, is_loopback: bool) -> None:
    assert is_loopback_host(host) is is_loopback


def test_require_loopback() -> None:
    assert require_loopback("https://127.0.0.1:27117") == "https://127.0.0.1:27117"
    assert require_loopback("https://[::1]:8443/x")
    with pytest.raises(TargetError, match="loopback"):
        require_loopback("https://login.microsoftonline.com/common", "sts_url")
    with pytest.raises(TargetError, match="loopback"):
        require_loopback("https://127.0.0.1.nip.io:443")
    with pytest.raises(TargetError, match="not a valid URL"):
        require_loopback("https://127.0.0.1:99999")
    with pytest.raises(TargetError, match="scheme"):
        require_loopback("file:///etc/passwd")


def _stack_doc(ca_bundle: Path, sts_url: str) -> dict[str, object]:
    return {
        "sts_url": sts_url,
        "ca_bundle": str(ca_bundle),
        "servers": {
            "amqp_url": "amqps://u:p@127.0.0.1:1",
            "amqp_sts_url": "amqps://pta-sts:p@127.0.0.1:1",
            "amqp_management_url": "http://127.0.0.1:2",
            "ldap_url": "ldap://127.0.0.1:3",
        },
        "tenants": [
            {
                "id": "t1",
                "name": "Contoso",
                "domain": "contoso.test",
                "app": {"client_id": "c1"},
                "users": [],
                "bulk_users": {"pattern": "user{n:04d}@contoso.test", "count": 10, "password": "p"},
            }
        ],
    }


def test_load_stack_refuses_a_remote_sts(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    path = tmp_path / "stack.json"
    path.write_text(json.dumps(_stack_doc(ca, "https://sts.example.com")))
    with pytest.raises(TargetError, match="not on this machine's loopback"):
        load_stack(path)
    path.write_text(json.dumps(_stack_doc(ca, "https://127.0.0.1:4")))
    target = load_stack(path)
    assert target.sts_urls == ("https://127.0.0.1:4",)
    assert target.tenant("CONTOSO.test").id == "t1"
    with pytest.raises(TargetError, match="no tenant"):
        target.tenant("fabrikam.test")


def test_load_stack_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="make up"):
        load_stack(tmp_path / "nope.json")


def _config(**kwargs: object) -> LoadConfig:
    base: dict[str, object] = {
        "token_urls": ("https://127.0.0.1:1/t/oauth2/v2.0/token",),
        "ca_bundle": None,
        "client_id": "c",
        "tenant": _tenant(),
        "mix": parse_mix("good=1"),
        "rate_rps": 10.0,
    }
    return LoadConfig(**(base | kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"duration_s": 601.0}, "--duration"),
        ({"duration_s": 0.0}, "--duration"),
        ({"max_requests": 1_000_001}, "--requests"),
        ({"concurrency": 4}, "exactly one"),
        ({"rate_rps": None}, "exactly one"),
        ({"rate_rps": math.inf}, "--rate"),
        ({"max_inflight": 0}, "--max-inflight"),
        ({"token_urls": ("https://10.1.2.3/t/oauth2/v2.0/token",)}, "loopback"),
    ],
)
def test_load_limits(changes: dict[str, object], message: str) -> None:
    with pytest.raises((LoadError, TargetError), match=message):
        _config(**changes).check()


# --------------------------------------------------------------------------- rate control
# The engine with a fake `post` (no network): what is sent when, and what is measured.


def _fake_post(monkeypatch: pytest.MonkeyPatch, service_s: Callable[[int], float]) -> list[float]:
    """Replace the HTTP call: request i takes service_s(i) seconds; returns send times."""
    sent: list[float] = []

    async def post(_run: object, _http: aiohttp.ClientSession, _attempt: object) -> str:
        i = len(sent)
        sent.append(time.monotonic())
        await asyncio.sleep(service_s(i))  # stands in for the server's answer time
        return "success"

    monkeypatch.setattr(engine._Run, "post", post)
    return sent


async def test_open_loop_sends_on_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _fake_post(monkeypatch, lambda _i: 0.001)
    result = await engine.run_load(_config(rate_rps=100.0, duration_s=0.5))
    assert result.requests == result.sent == 50 and result.dropped == 0
    assert result.results == {"success": 50} and result.unexpected_errors == 0
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert statistics.median(gaps) == pytest.approx(0.010, abs=0.002)
    assert sent[-1] - sent[0] == pytest.approx(0.49, abs=0.05)  # no drift over the run
    assert result.throughput_rps == pytest.approx(100, rel=0.1)


async def test_open_loop_latency_counts_from_the_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One slow answer must not delay the arrivals after it (open loop), and with the cap
    # at one request in flight, the arrivals during the stall are dropped, not queued.
    _fake_post(monkeypatch, lambda i: 0.2 if i == 0 else 0.001)
    result = await engine.run_load(_config(rate_rps=100.0, duration_s=0.5, max_inflight=1))
    assert result.sent + result.dropped == 50
    assert result.dropped == pytest.approx(19, abs=3)  # arrivals in the 0.2 s stall
    assert result.latency is not None and result.latency.max >= 200


async def test_open_loop_without_cap_keeps_sending_through_a_stall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_post(monkeypatch, lambda i: 0.2 if i == 0 else 0.001)
    result = await engine.run_load(_config(rate_rps=100.0, duration_s=0.5))
    assert result.sent == 50 and result.dropped == 0
    assert result.latency is not None and result.latency.p50 < 50


async def test_closed_loop_keeps_concurrency_requests_outstanding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = _fake_post(monkeypatch, lambda _i: 0.02)
    result = await engine.run_load(
        _config(rate_rps=None, concurrency=4, duration_s=5.0, max_requests=40)
    )
    assert result.requests == result.sent == 40
    # 4 workers, 20 ms each: 10 rounds of 4, about 0.2 s in all.
    assert sent[-1] - sent[0] == pytest.approx(0.18, abs=0.08)
    assert result.latency is not None and result.latency.p50 == pytest.approx(20, abs=10)


# --------------------------------------------------------------------------- bench table


def test_figures_have_ratios_to_their_floors_and_failed_steps_are_listed() -> None:
    steps = {
        "directory": {
            "status": "ok",
            "result": {"threads": 8, "binds_per_s": 4000.0, "search_bind_per_s": 1600.0},
        },
        "crypto": {"status": "ok", "result": {"rsa_decrypts_per_s": 3300.0}},
        "agent_alone": {"status": "failed", "error": "AgentAloneError: no reply"},
        "message_size": {
            "status": "ok",
            "result": {"3": {"bytes": 1635, "design_bytes": 1550}},
        },
    }
    rows = {r["figure"]: r for r in figures(steps)}
    assert rows["1. directory: search + bind/s (agent's work)"]["ratio"] == 0.4
    assert rows["5. request message, 3 agents"]["ratio"] == round(1635 / 1550, 3)
    text = markdown(
        {
            "started_at": "2025-01-01T00:00:00+00:00",
            "host": {"cpus": 2, "python": "3.11"},
            "tenant": {"domain": "contoso.test"},
            "elapsed_s": 1.0,
            "steps": steps,
            "figures": list(rows.values()),
        }
    )
    assert "| 1. directory floor: binds/s (8 threads) | 4,000 /s | — | — |" in text
    assert "`agent_alone` failed: AgentAloneError: no reply" in text
