"""Benchmark step 4: HTTP sign-ins per second through the whole stack, and latency at half
the peak rate.

With ``agents`` of the tenant's agents consuming (the others stopped through supervisord
and started again in ``finally``), ``pta-load``'s engine runs closed-loop steps of rising
concurrency (a ladder) with good passwords over the bulk users; the peak is the highest
rate of successful sign-ins of any step. The ladder stops climbing once a step gains
less than 5 % (past the knee more concurrency only adds queueing). Then one open-loop run
at half the peak gives the latency a user sees at a comfortable load, measured from the
scheduled arrival times. The first step (concurrency 1) gives the unloaded latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from bench import engine
from bench.stackctl import Supervisorctl, wait_consumers
from bench.target import StackTarget, TenantInfo
from bench.users import Mix, parse_mix

__all__ = ["E2eError", "end_to_end"]

GOOD_ONLY: Final[Mix] = parse_mix("good=100")
MIN_GAIN: Final = 1.05


class E2eError(RuntimeError):
    """The end-to-end run could not produce a figure; the message says why."""


def _step_summary(result: engine.LoadResult) -> dict[str, Any]:
    doc = result.as_json()
    return {
        "concurrency": result.config.concurrency,
        "rate_rps": result.config.rate_rps,
        "requests": result.requests,
        "success_rps": doc["success_rps"],
        "throughput_rps": doc["throughput_rps"],
        "latency_ms": doc["latency_ms"],
        "unexpected_errors": result.unexpected_errors,
        "unexpected": doc["unexpected"],
        "dropped": result.dropped,
        "max_schedule_lag_ms": doc["max_schedule_lag_ms"],
        "generator_cpu_percent": doc["generator_cpu_percent"],
    }


async def end_to_end(
    target: StackTarget,
    tenant: TenantInfo,
    *,
    agents: int,
    ladder: Sequence[int] = (1, 8, 32, 96),
    step_s: float = 5.0,
    half_s: float = 10.0,
) -> dict[str, Any]:
    """Peak sign-ins/s with ``agents`` agents consuming, and latency at half of it.

    Raises ``E2eError`` (no success at all, too few agents) or ``StackControlError``.
    """
    all_agents = target.agents_of(tenant.id)
    if len(all_agents) < agents:
        raise E2eError(f"tenant {tenant.domain} has {len(all_agents)} agents, not {agents}")
    ctl = Supervisorctl(target.state_dir)
    states = ctl.states()
    keep = [a.name for a in all_agents[:agents]]
    extra = [a.name for a in all_agents[agents:] if states.get(a.name) == "RUNNING"]
    ctl.start([n for n in keep if states.get(n) != "RUNNING"])
    ctl.stop(extra)
    try:
        await wait_consumers(target, tenant.id, agents, timeout_s=60)
        steps = []
        best: dict[str, Any] | None = None
        for concurrency in ladder:
            config = engine.config_for(
                target,
                tenant.id,
                GOOD_ONLY,
                concurrency=concurrency,
                duration_s=step_s,
                heal=False,
            )
            step = _step_summary(await engine.run_load(config))
            steps.append(step)
            if best is not None and step["success_rps"] < best["success_rps"] * MIN_GAIN:
                if step["success_rps"] > best["success_rps"]:
                    best = step
                break
            if best is None or step["success_rps"] > best["success_rps"]:
                best = step
        if best is None or best["success_rps"] <= 0:
            raise E2eError(f"no successful sign-in in the ladder: {steps[-1]['unexpected']}")
        half_rate = best["success_rps"] / 2
        config = engine.config_for(
            target,
            tenant.id,
            GOOD_ONLY,
            rate_rps=half_rate,
            duration_s=half_s,
            heal=False,
        )
        half_result = await engine.run_load(config)
        half = _step_summary(half_result)
    finally:
        ctl.start(extra)
        if extra:
            await wait_consumers(target, tenant.id, agents + len(extra), timeout_s=60)
    unloaded = steps[0]["latency_ms"] if steps[0]["concurrency"] == 1 else None
    return {
        "agents": agents,
        "peak_success_rps": best["success_rps"],
        "peak_concurrency": best["concurrency"],
        "half_rate_rps": round(half_rate, 1),
        "half_rate_latency_ms": half["latency_ms"],
        "half_rate_unexpected": half["unexpected_errors"],
        "unloaded_latency_ms": unloaded,
        "ladder": steps,
        "half_rate": half,
        "half_rate_run": half_result.as_json(),  # the full pta-load document, for plots
    }
