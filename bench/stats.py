"""Load-test statistics: percentiles, a latency histogram, per-interval series, arrivals.

Pure functions and values (no I/O, no clock reads), so the numbers `pta-load` and
`make bench` print can be checked against known samples in unit tests.

Percentiles use the nearest-rank definition: the value at percentile q of n sorted samples
is the sample of rank ``ceil(q/100 * n)`` (rank 1 for q = 0). It is always an observed
latency, never an interpolation between two, and with few samples a high percentile is the
maximum rather than an optimistic guess (p99.9 of 100 samples is the worst one), which is
the conservative reading a latency report wants (as HdrHistogram reports it).

Arrival schedules for the open loop are offsets from the start of the run: ``uniform``
spaces them exactly ``1/rate`` apart; ``poisson`` draws exponential gaps of mean
``1/rate`` from a seeded generator (bursty, like independent users). Latency is measured
from each request's scheduled offset, not from when it was sent, so a server that stalls
shows up as latency instead of being hidden by the client waiting (coordinated omission).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "HISTOGRAM_BOUNDS_MS",
    "MAX_ARRIVALS",
    "REPORTED_PERCENTILES",
    "Arrivals",
    "Histogram",
    "IntervalStats",
    "LatencySummary",
    "arrival_offsets",
    "per_interval",
    "percentile",
    "percentiles",
    "summarize",
]

Arrivals = Literal["uniform", "poisson"]

# The percentiles every report shows, with their JSON key (a dot is awkward in jq).
REPORTED_PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))

# A bound on any one schedule, so a typo in a rate cannot build a huge list.
MAX_ARRIVALS: Final = 10_000_000

# Upper bounds (ms) of the histogram's buckets: 1-2-5 steps from 0.5 ms to 60 s, then +inf.
HISTOGRAM_BOUNDS_MS: Final = (
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1_000.0,
    2_000.0,
    5_000.0,
    10_000.0,
    20_000.0,
    60_000.0,
    math.inf,
)


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Return the nearest-rank percentile ``q`` (0..100) of samples sorted ascending.

    Raises ``ValueError`` for no samples or ``q`` outside [0, 100]; the caller sorts
    (``percentiles`` does it once for many ``q``).
    """
    if not sorted_samples:
        raise ValueError("no samples: a percentile needs at least one")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile must be in [0, 100], not {q}")
    n = len(sorted_samples)
    # round() first: q/100*n in binary floating point can land a hair above an integer
    # (99.9/100*1000 = 999.0000000000001), which ceil would push one rank too high.
    rank = max(1, math.ceil(round(q / 100.0 * n, 9)))
    return sorted_samples[min(rank, n) - 1]


def percentiles(samples: Iterable[float], qs: Sequence[float]) -> list[float]:
    """Return the nearest-rank percentiles ``qs`` of unsorted ``samples`` (sorted once)."""
    ordered = sorted(samples)
    return [percentile(ordered, q) for q in qs]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Count, min, mean, the reported percentiles and max of a set of latencies (ms)."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    p99_9: float
    max: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "min": round(self.min, 3),
            "mean": round(self.mean, 3),
            "p50": round(self.p50, 3),
            "p90": round(self.p90, 3),
            "p99": round(self.p99, 3),
            "p99_9": round(self.p99_9, 3),
            "max": round(self.max, 3),
        }


def summarize(samples_ms: Iterable[float]) -> LatencySummary | None:
    """Summarise latencies; None when there are none (a run where nothing completed)."""
    ordered = sorted(samples_ms)
    if not ordered:
        return None
    p50, p90, p99, p99_9 = (percentile(ordered, q) for _, q in REPORTED_PERCENTILES)
    return LatencySummary(
        count=len(ordered),
        min=ordered[0],
        mean=math.fsum(ordered) / len(ordered),
        p50=p50,
        p90=p90,
        p99=p99,
        p99_9=p99_9,
        max=ordered[-1],
    )


@dataclass(slots=True)
class Histogram:
    """Counts of latencies per bucket; bucket i holds ``bounds[i-1] < x <= bounds[i]``."""

    bounds: tuple[float, ...] = HISTOGRAM_BOUNDS_MS
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.bounds or list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        if self.bounds[-1] != math.inf:
            self.bounds = (*self.bounds, math.inf)
        if not self.counts:
            self.counts = [0] * len(self.bounds)

    def add(self, value: float) -> None:
        # 17 buckets: a linear scan is as fast as bisect here and obviously right.
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return

    @property
    def total(self) -> int:
        return sum(self.counts)

    def as_rows(self) -> list[tuple[str, int]]:
        """``(upper bound, count)`` rows; the last bound is ``"+inf"`` (JSON has no inf)."""
        return [
            ("+inf" if math.isinf(b) else f"{b:g}", c)
            for b, c in zip(self.bounds, self.counts, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class IntervalStats:
    """What completed in one interval ``[start_s, start_s + width)`` of a run."""

    start_s: float
    completed: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def per_interval(
    completions: Iterable[tuple[float, float, bool]], *, width_s: float, span_s: float
) -> list[IntervalStats]:
    """Bin ``(completed_at_s, latency_ms, is_error)`` triples into intervals of ``width_s``.

    Times are offsets from the run's start; intervals cover ``[0, span_s)`` (a completion
    at or after ``span_s`` goes into the last one). Used for the plot and the JSON
    timeline: throughput is ``completed / width_s`` per interval.
    """
    if not (width_s > 0 and math.isfinite(width_s)):
        raise ValueError("width_s must be positive")
    n = max(1, math.ceil(round(span_s / width_s, 9)))
    latencies: list[list[float]] = [[] for _ in range(n)]
    errors = [0] * n
    for at_s, latency_ms, is_error in completions:
        i = min(n - 1, max(0, int(at_s // width_s)))
        latencies[i].append(latency_ms)
        if is_error:
            errors[i] += 1
    out = []
    for i in range(n):
        ordered = sorted(latencies[i])
        out.append(
            IntervalStats(
                start_s=round(i * width_s, 6),
                completed=len(ordered),
                errors=errors[i],
                p50_ms=percentile(ordered, 50) if ordered else None,
                p99_ms=percentile(ordered, 99) if ordered else None,
                max_ms=ordered[-1] if ordered else None,
            )
        )
    return out


def arrival_offsets(
    rate_rps: float,
    duration_s: float,
    *,
    max_requests: int | None = None,
    arrivals: Arrivals = "uniform",
    seed: int = 0,
) -> Iterator[float]:
    """Yield the open loop's scheduled send times (seconds from the start), ascending.

    ``uniform``: ``i / rate`` for i = 0, 1, ... while below ``duration_s``; ``poisson``:
    cumulative exponential gaps of mean ``1 / rate`` from ``random.Random(seed)``. Stops
    at ``duration_s`` or after ``max_requests``. Each offset is computed from the start,
    not by adding gaps to a clock, so rounding never drifts the rate. Raises
    ``ValueError`` for a rate or duration that is not positive and finite.
    """
    if not (math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError("rate_rps must be positive and finite")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError("duration_s must be positive and finite")
    limit = MAX_ARRIVALS if max_requests is None else min(max_requests, MAX_ARRIVALS)
    if arrivals == "uniform":
        for i in range(limit):
            at = i / rate_rps
            if at >= duration_s:
                return
            yield at
    elif arrivals == "poisson":
        rng = random.Random(seed)  # noqa: S311 -- a load shape, not a secret
        at = 0.0
        for _ in range(limit):
            yield at
            at += rng.expovariate(rate_rps)
            if at >= duration_s:
                return
    else:
        raise ValueError(f"arrivals must be uniform or poisson, not {arrivals!r}")
