"""The load engine behind ``pta-load``: sign-ins against the STS token endpoint.

One ``run_load(config)`` call fires password-grant requests (RFC 6749 section 4.3) at
``POST {sts}/{tenant}/oauth2/v2.0/token`` over TLS verified with the stack's CA bundle,
round-robin over the STS replicas, and returns a ``LoadResult``. Two modes:

- open loop (``rate_rps``): arrivals at fixed scheduled times (``stats.arrival_offsets``)
  on the monotonic clock, whatever the server does; latency is measured from the
  *scheduled* time, so a stall shows as latency instead of being hidden by a client that
  waits (coordinated omission). At most ``max_inflight`` requests are outstanding; an
  arrival that finds the cap reached is not sent and is counted in ``dropped``.
- closed loop (``concurrency``): that many workers, each sending its next request when
  the previous one is answered; latency is from send to answer.

Every answer is classified (``classify``): 200 with an access token is ``success``; a
JSON error body with ``error_codes`` is ``AADSTS<code>`` (4xx, and the 503 the STS sends
for agent-side failures); everything else (connection error, timeout, 5xx without an
AADSTS code, unparseable body) is a fault. An answer is *expected* when it is one the
user's kind predicts (``users.EXPECTED``); faults and other answers are counted as
unexpected errors by reason (``good->AADSTS80002``).

Bounds: ``duration_s`` at most 600 s, ``max_requests`` at most 1,000,000, and a request
timeout, so a run always ends; the engine only sends to the URLs it is given, which
``bench.target`` has checked are on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import orjson

from bench import stats
from bench.target import StackTarget, TenantInfo, require_loopback
from bench.users import SUCCESS, Attempt, Mix, UserPicker

__all__ = [
    "MAX_DURATION_S",
    "MAX_REQUESTS",
    "LoadConfig",
    "LoadError",
    "LoadResult",
    "Progress",
    "classify",
    "config_for",
    "run_load",
]

MAX_DURATION_S: Final = 600.0
MAX_REQUESTS: Final = 1_000_000
MAX_RATE_RPS: Final = 50_000.0
MAX_CONCURRENCY: Final = 1_000
MAX_INFLIGHT: Final = 10_000
HEAL_CONCURRENCY: Final = 8
_START_LEAD_S: Final = 0.05  # first arrival a little after setup, so it is not late


class LoadError(ValueError):
    """The load test settings are not valid; the message names the option to fix."""


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One run: where, who, how fast, how long. Checked by ``check()``."""

    token_urls: tuple[str, ...]
    ca_bundle: str | None  # the stack's service CA (None: the system's, for tests)
    client_id: str
    tenant: TenantInfo
    mix: Mix
    duration_s: float = 10.0
    max_requests: int | None = None
    rate_rps: float | None = None
    concurrency: int | None = None
    max_inflight: int = 1_000
    timeout_s: float = 15.0
    arrivals: stats.Arrivals = "uniform"
    seed: int = 0
    max_wrong_per_user: int = 2
    heal: bool = True
    scope: str = "openid"

    @property
    def mode(self) -> str:
        return "open" if self.rate_rps is not None else "closed"

    def check(self) -> None:
        """Raise ``LoadError`` naming the first bad setting."""
        if (self.rate_rps is None) == (self.concurrency is None):
            raise LoadError("give exactly one of --rate (open loop) or --concurrency (closed)")
        if not (math.isfinite(self.duration_s) and 0 < self.duration_s <= MAX_DURATION_S):
            raise LoadError(f"--duration must be more than 0 and at most {MAX_DURATION_S:g} s")
        if self.max_requests is not None and not 1 <= self.max_requests <= MAX_REQUESTS:
            raise LoadError(f"--requests must be 1..{MAX_REQUESTS}")
        if self.rate_rps is not None and not (
            math.isfinite(self.rate_rps) and 0 < self.rate_rps <= MAX_RATE_RPS
        ):
            raise LoadError(f"--rate must be more than 0 and at most {MAX_RATE_RPS:g}/s")
        if self.concurrency is not None and not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise LoadError(f"--concurrency must be 1..{MAX_CONCURRENCY}")
        if not 1 <= self.max_inflight <= MAX_INFLIGHT:
            raise LoadError(f"--max-inflight must be 1..{MAX_INFLIGHT}")
        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= 120):
            raise LoadError("--timeout must be more than 0 and at most 120 s")
        if not self.token_urls:
            raise LoadError("no STS URL to send to")
        for url in self.token_urls:
            require_loopback(url, "token endpoint")


def config_for(target: StackTarget, tenant_key: str | None, mix: Mix, **kwargs: Any) -> LoadConfig:
    """A ``LoadConfig`` for one tenant of a stack: its token endpoint on every STS replica."""
    tenant = target.tenant(tenant_key)
    config = LoadConfig(
        token_urls=tuple(f"{u}/{tenant.id}/oauth2/v2.0/token" for u in target.sts_urls),
        ca_bundle=str(target.ca_bundle),
        client_id=tenant.client_id,
        tenant=tenant,
        mix=mix,
        **kwargs,
    )
    config.check()
    return config


def classify(status: int, body: bytes) -> str:
    """Name an HTTP answer: ``success``, ``AADSTS<code>``, or a fault reason.

    A fault reason never starts with ``AADSTS`` and is not ``success``; it never holds
    the body (which could carry a token).
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"HTTP {status} (not JSON)"
    if not isinstance(doc, dict):
        return f"HTTP {status} (not a JSON object)"
    if status == 200:
        return SUCCESS if isinstance(doc.get("access_token"), str) else "HTTP 200 (no token)"
    codes = doc.get("error_codes")
    if isinstance(codes, list) and codes and isinstance(codes[0], int):
        return f"AADSTS{codes[0]}"
    return f"HTTP {status} (no error_codes)"


def is_answer(outcome: str) -> bool:
    return outcome == SUCCESS or outcome.startswith("AADSTS")


@dataclass(slots=True)
class Progress:
    """Live counters, read by the progress display while the run goes on."""

    started_at: float = 0.0  # monotonic start of the schedule
    sent: int = 0
    completed: int = 0
    unexpected: int = 0
    dropped: int = 0
    inflight: int = 0
    is_done: bool = False


@dataclass(slots=True)
class _Recorder:
    """Per-request results in compact arrays (a million requests are ~30 MB)."""

    done_at: array[float] = field(default_factory=lambda: array("d"))
    latency_ms: array[float] = field(default_factory=lambda: array("d"))
    service_ms: array[float] = field(default_factory=lambda: array("d"))
    is_error: array[int] = field(default_factory=lambda: array("b"))
    results: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)

    def add(
        self, attempt: Attempt, outcome: str, *, done_at: float, latency: float, service: float
    ) -> bool:
        """Record one answer; returns whether it was unexpected."""
        self.done_at.append(done_at)
        self.latency_ms.append(latency * 1000.0)
        self.service_ms.append(service * 1000.0)
        if is_answer(outcome):
            self.results[outcome] += 1
        is_unexpected = outcome not in attempt.expected
        if is_unexpected:
            reason = f"{attempt.kind}->{outcome}" if is_answer(outcome) else outcome
            self.unexpected[reason] += 1
        self.is_error.append(1 if is_unexpected else 0)
        self.by_kind.setdefault(str(attempt.kind), Counter())[outcome] += 1
        return is_unexpected


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one run measured; ``as_json()`` is the ``--json`` document."""

    config: LoadConfig
    requests: int
    sent: int
    dropped: int
    duration_s: float
    send_window_s: float
    latency: stats.LatencySummary | None
    service: stats.LatencySummary | None
    histogram: stats.Histogram
    timeline: list[stats.IntervalStats]
    results: dict[str, int]
    unexpected: dict[str, int]
    by_kind: dict[str, dict[str, int]]
    max_schedule_lag_ms: float
    generator_cpu_percent: float
    wrong_capped: int
    healed: int
    heal_failed: int
    interrupted: bool

    @property
    def unexpected_errors(self) -> int:
        return sum(self.unexpected.values())

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def success_rps(self) -> float:
        return self.results.get(SUCCESS, 0) / self.duration_s if self.duration_s > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "schema": "pta-load/1",
            "mode": c.mode,
            "rate_rps": c.rate_rps,
            "arrivals": c.arrivals if c.mode == "open" else None,
            "concurrency": c.concurrency,
            "max_inflight": c.max_inflight if c.mode == "open" else None,
            "tenant": {"id": c.tenant.id, "domain": c.tenant.domain},
            "token_urls": list(c.token_urls),
            "mix": c.mix.as_dict(),
            "requests": self.requests,
            "sent": self.sent,
            "dropped": self.dropped,
            "duration_s": round(self.duration_s, 3),
            "send_window_s": round(self.send_window_s, 3),
            "throughput_rps": round(self.throughput_rps, 2),
            "success_rps": round(self.success_rps, 2),
            "latency_ms": self.latency.as_dict() if self.latency else None,
            "service_time_ms": self.service.as_dict() if self.service else None,
            "results": dict(sorted(self.results.items())),
            "unexpected_errors": self.unexpected_errors,
            "unexpected": dict(sorted(self.unexpected.items(), key=lambda kv: -kv[1])),
            "by_kind": self.by_kind,
            "latency_histogram_ms": [[b, n] for b, n in self.histogram.as_rows()],
            "timeline": [
                {
                    "t_s": i.start_s,
                    "completed": i.completed,
                    "unexpected": i.errors,
                    "p50_ms": _round(i.p50_ms),
                    "p99_ms": _round(i.p99_ms),
                    "max_ms": _round(i.max_ms),
                }
                for i in self.timeline
            ],
            "max_schedule_lag_ms": round(self.max_schedule_lag_ms, 3),
            "generator_cpu_percent": round(self.generator_cpu_percent, 1),
            "wrong_capped": self.wrong_capped,
            "healed": self.healed,
            "heal_failed": self.heal_failed,
            "interrupted": self.interrupted,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class _Run:
    """The state of one run: session, picker, recorder, counters."""

    def __init__(self, config: LoadConfig, progress: Progress, stop: asyncio.Event) -> None:
        self.config = config
        self.progress = progress
        self.stop = stop
        self.picker = UserPicker(
            config.tenant, config.mix, max_wrong_per_user=config.max_wrong_per_user
        )
        self.recorder = _Recorder()
        self.max_lag_s = 0.0
        self.t0 = 0.0
        self.last_send = 0.0
        self._url_index = 0

    def _form(self, attempt: Attempt) -> bytes:
        return urlencode(
            {
                "grant_type": "password",
                "client_id": self.config.client_id,
                "scope": self.config.scope,
                "username": attempt.username,
                "password": attempt.password,
            }
        ).encode()

    def _next_url(self) -> str:
        urls = self.config.token_urls
        url = urls[self._url_index % len(urls)]
        self._url_index += 1
        return url

    async def post(self, http: aiohttp.ClientSession, attempt: Attempt) -> str:
        """Send one sign-in; return its outcome (never raises but CancelledError)."""
        try:
            async with http.post(
                self._next_url(),
                data=self._form(attempt),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ) as response:
                body = await response.read()
                return classify(response.status, body)
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as exc:
            return type(exc).__name__
        except OSError as exc:
            return type(exc).__name__

    async def one(self, http: aiohttp.ClientSession, attempt: Attempt, scheduled: float) -> None:
        """Send one request and record it; the caller counted it in ``inflight``."""
        sent = time.monotonic()
        try:
            outcome = await self.post(http, attempt)
        finally:
            self.progress.inflight -= 1
        done = time.monotonic()
        is_unexpected = self.recorder.add(
            attempt, outcome, done_at=done - self.t0, latency=done - scheduled, service=done - sent
        )
        self.progress.completed += 1
        self.progress.unexpected += is_unexpected

    async def _sleep(self, delay: float) -> None:
        """Sleep until the next arrival; a long gap (a low rate) still ends on ``stop``."""
        if delay < 0.2:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.stop.wait()

    def budget_left(self) -> bool:
        cap = self.config.max_requests
        return cap is None or self.progress.sent + self.progress.dropped < cap

    async def open_loop(self, http: aiohttp.ClientSession) -> None:
        c = self.config
        assert c.rate_rps is not None
        offsets = stats.arrival_offsets(
            c.rate_rps,
            c.duration_s,
            max_requests=c.max_requests,
            arrivals=c.arrivals,
            seed=c.seed,
        )
        async with asyncio.TaskGroup() as group:
            for offset in offsets:
                scheduled = self.t0 + offset
                delay = scheduled - time.monotonic()
                if delay > 0:
                    await self._sleep(delay)
                else:
                    self.max_lag_s = max(self.max_lag_s, -delay)
                    await asyncio.sleep(0)  # behind schedule: still let the requests run
                if self.stop.is_set():
                    break
                if self.progress.inflight >= c.max_inflight:
                    self.progress.dropped += 1
                    continue
                self.progress.sent += 1
                # Counted here, not when the task first runs, so a burst of late arrivals
                # cannot overshoot the cap before any of them starts.
                self.progress.inflight += 1
                self.last_send = time.monotonic()
                group.create_task(self.one(http, self.picker.next(), scheduled))

    async def closed_loop(self, http: aiohttp.ClientSession) -> None:
        c = self.config
        assert c.concurrency is not None
        deadline = self.t0 + c.duration_s

        async def worker() -> None:
            while not self.stop.is_set() and time.monotonic() < deadline and self.budget_left():
                self.progress.sent += 1
                self.progress.inflight += 1
                now = time.monotonic()
                self.last_send = now
                await self.one(http, self.picker.next(), now)

        delay = self.t0 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        async with asyncio.TaskGroup() as group:
            for _ in range(c.concurrency):
                group.create_task(worker())

    async def heal(self, http: aiohttp.ClientSession) -> tuple[int, int]:
        """Sign in once, with the right password, each user that got a wrong one."""
        attempts = self.picker.heal_list()
        if not attempts:
            return 0, 0
        gate = asyncio.Semaphore(HEAL_CONCURRENCY)

        async def heal_one(attempt: Attempt) -> bool:
            async with gate:
                return await self.post(http, attempt) == SUCCESS

        tasks = [asyncio.ensure_future(heal_one(a)) for a in attempts]
        # Bounded as a whole: a stack that stopped answering must not hold the tool.
        _done, late = await asyncio.wait(tasks, timeout=2 * self.config.timeout_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        healed = sum(1 for t in tasks if not t.cancelled() and t.result())
        return healed, len(tasks) - healed


async def run_load(
    config: LoadConfig,
    *,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    on_start: Callable[[], None] | None = None,
) -> LoadResult:
    """Run one load test to its end (duration, request budget or ``stop``) and return
    what it measured. Raises ``LoadError`` for bad settings and ``MixError`` when the
    tenant lacks users for the mix; request failures are results, never exceptions."""
    config.check()
    progress = progress or Progress()
    stop = stop or asyncio.Event()
    run = _Run(config, progress, stop)
    tls = ssl.create_default_context(cafile=config.ca_bundle)
    limit = config.concurrency if config.concurrency is not None else config.max_inflight
    connector = aiohttp.TCPConnector(ssl=tls, limit=limit, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, raise_for_status=False
    ) as http:
        run.t0 = time.monotonic() + _START_LEAD_S
        cpu_t0 = time.process_time()
        progress.started_at = run.t0
        if on_start is not None:
            on_start()
        if config.mode == "open":
            await run.open_loop(http)
        else:
            await run.closed_loop(http)
        finished = time.monotonic()
        cpu_s = time.process_time() - cpu_t0
        progress.is_done = True
        healed, heal_failed = (0, 0)
        if config.heal:
            healed, heal_failed = await run.heal(http)
    rec = run.recorder
    duration = max(finished - run.t0, 1e-9)
    histogram = stats.Histogram()
    for value in rec.latency_ms:
        histogram.add(value)
    timeline = stats.per_interval(
        zip(rec.done_at, rec.latency_ms, (bool(e) for e in rec.is_error), strict=True),
        width_s=1.0,
        span_s=duration,
    )
    return LoadResult(
        config=config,
        requests=len(rec.done_at),
        sent=progress.sent,
        dropped=progress.dropped,
        duration_s=duration,
        send_window_s=max(0.0, run.last_send - run.t0),
        latency=stats.summarize(rec.latency_ms),
        service=stats.summarize(rec.service_ms),
        histogram=histogram,
        timeline=timeline,
        results=dict(rec.results),
        unexpected=dict(rec.unexpected),
        by_kind={k: dict(v) for k, v in rec.by_kind.items()},
        max_schedule_lag_ms=run.max_lag_s * 1000.0,
        generator_cpu_percent=100.0 * cpu_s / duration,
        wrong_capped=run.picker.wrong_capped,
        healed=healed,
        heal_failed=heal_failed,
        interrupted=stop.is_set(),
    )
