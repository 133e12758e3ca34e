"""``make bench``: the benchmark driver. ``python -m bench.run [--stack-json PATH] [--out DIR]
[--quick] [--own-stack]``.

Runs five steps against one stack on this machine, each on its own (a failing step is
recorded with its reason and the others still run), and writes ``<out>/results.json``
and ``<out>/results.md`` (a table of figure, value, floor and ratio):

1. ``directory``: ldap3 binds/s against the stack's slapd with the agent's thread-pool
   size (``bench.floors.directory_floor``), in a child process pinned to one core;
2. ``crypto``: RSA-2048 OAEP decrypts/s on one core (``bench.floors.crypto_floor``);
3. ``agent_alone``: validations/s of one agent process pinned to one core, fed from the
   tenant queue by a publisher of real envelopes (``bench.agent_alone``);
4. ``e2e_3`` and ``e2e_1``: HTTP sign-ins/s through the STS with 3 and with 1 agent, and
   latency at half the peak (``bench.e2e``);
5. ``message_size``: request body bytes with 1, 3 and 40 agents (``bench.floors``).

Full mode takes about 2 minutes, ``--quick`` about 1.4 (2-core host); a step is skipped
when the run has already used its time budget (``--budget``, default 290 s).
``--own-stack`` starts a private stack in a temporary folder on free ports and stops it
afterwards (add about 25 s),
so the benchmark never touches the stack of `make up`; otherwise the stack of
``--stack-json`` is used, and steps 3 and 4 stop and restart some of its agents.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.agent_alone import agent_alone
from bench.e2e import end_to_end
from bench.plot import PlotUnavailable, plot_timeline
from bench.target import DEFAULT_STACK_JSON, StackTarget, TargetError, TenantInfo, load_stack

__all__ = ["STEPS", "Settings", "figures", "main", "markdown", "run_bench"]

DEFAULT_OUT: Final = Path("bench/results")
PINNED_CPU: Final = 0


@dataclass(frozen=True, slots=True)
class Settings:
    """How long each step measures; ``quick()`` for a ~1 minute run."""

    ldap_s: float = 4.0
    crypto_s: float = 4.0
    agent_s: float = 10.0
    agent_warmup_s: float = 3.0
    ladder: tuple[int, ...] = (1, 8, 32, 96)
    step_s: float = 5.0
    half_s: float = 10.0
    budget_s: float = 290.0

    @classmethod
    def quick(cls, budget_s: float = 290.0) -> Settings:
        return cls(
            ldap_s=2.0,
            crypto_s=2.0,
            agent_s=5.0,
            agent_warmup_s=2.0,
            ladder=(1, 16, 64),
            step_s=3.0,
            half_s=5.0,
            budget_s=budget_s,
        )


class StepFailed(RuntimeError):
    """A benchmark step failed; the message says why."""


class StackStartFailed(RuntimeError):
    """The private stack of --own-stack did not start; its logs are kept."""


def _floor_process(what: str, *args: str) -> dict[str, Any]:
    """Run ``python -m bench.floors <what>`` pinned to one core; its JSON result."""
    command = [sys.executable, "-m", "bench.floors", what, *args]
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(PINNED_CPU), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise StepFailed(result.stderr.strip()[-1000:] or f"exit {result.returncode}")
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


STEPS: Final = ("directory", "crypto", "message_size", "agent_alone", "e2e_3", "e2e_1")


async def run_bench(
    target: StackTarget,
    tenant: TenantInfo,
    settings: Settings,
    out: Path,
    only: frozenset[str] = frozenset(STEPS),
) -> dict[str, Any]:
    """Run the steps in ``only`` (all by default) in the order of ``STEPS``; returns the
    results document (steps and figures)."""
    t0 = time.monotonic()
    stack_json = str(target.path)
    steps: dict[str, Any] = {}

    async def directory() -> dict[str, Any]:
        return await asyncio.to_thread(
            _floor_process,
            "directory",
            "--stack-json",
            stack_json,
            "--tenant",
            tenant.id,
            "--seconds",
            str(settings.ldap_s),
        )

    async def crypto() -> dict[str, Any]:
        return await asyncio.to_thread(
            _floor_process, "crypto", "--seconds", str(settings.crypto_s)
        )

    async def message_size() -> dict[str, Any]:
        return await asyncio.to_thread(_floor_process, "message-size")

    async def alone() -> dict[str, Any]:
        return await agent_alone(
            target,
            tenant,
            seconds=settings.agent_s,
            warmup_s=settings.agent_warmup_s,
            cpu=PINNED_CPU,
            log_path=out / "agent-alone.log",
        )

    def e2e(agents: int) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def step() -> dict[str, Any]:
            return await end_to_end(
                target,
                tenant,
                agents=agents,
                ladder=settings.ladder,
                step_s=settings.step_s,
                half_s=settings.half_s,
            )

        return step

    plan: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        ("directory", directory),
        ("crypto", crypto),
        ("message_size", message_size),
        ("agent_alone", alone),
        ("e2e_3", e2e(3)),
        ("e2e_1", e2e(1)),
    ]
    for name, step in plan:
        if name not in only:
            continue
        started = time.monotonic()
        if started - t0 > settings.budget_s:
            steps[name] = {"status": "skipped", "error": "time budget used up"}
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            result = await step()
            steps[name] = {"status": "ok", "result": result}
            if "half_rate_run" in result:
                _plot(result["half_rate_run"], out / f"{name}-half-rate.png", name)
        except Exception as exc:  # one step's failure is reported; the others still run
            steps[name] = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=6),
            }
        steps[name]["seconds"] = round(time.monotonic() - started, 1)
        print(f"bench: {name} {steps[name]['status']}", file=sys.stderr, flush=True)
    return {
        "schema": "pta-bench/1",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {k: getattr(settings, k) for k in Settings.__dataclass_fields__},
        "stack_json": stack_json,
        "tenant": {"id": tenant.id, "domain": tenant.domain},
        "elapsed_s": round(time.monotonic() - t0, 1),
        "steps": steps,
        "figures": figures(steps),
    }


def _plot(doc: dict[str, Any], path: Path, title: str) -> None:
    """Plot a pta-load document when matplotlib is installed (a dev dependency)."""
    try:
        plot_timeline(doc, path, title=f"bench {title}, half peak")
    except (PlotUnavailable, OSError) as exc:  # a missing plot never fails a step
        print(f"bench: no plot: {exc}", file=sys.stderr)


def _ok(steps: dict[str, Any], name: str) -> dict[str, Any] | None:
    step = steps.get(name)
    if step and step.get("status") == "ok":
        result: dict[str, Any] = step["result"]
        return result
    return None


def _row(
    figure: str, value: float | None, unit: str, floor_name: str = "", floor: float | None = None
) -> dict[str, Any]:
    ratio = value / floor if value is not None and floor else None
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "floor": floor_name,
        "floor_value": floor,
        "ratio": round(ratio, 3) if ratio is not None else None,
    }


def figures(steps: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows: each figure with its floor and ratio (None where unknown)."""
    rows = []
    d = _ok(steps, "directory")
    c = _ok(steps, "crypto")
    a = _ok(steps, "agent_alone")
    binds = d["binds_per_s"] if d else None
    search_binds = d["search_bind_per_s"] if d else None
    decrypts = c["rsa_decrypts_per_s"] if c else None
    alone = a["validations_per_s"] if a else None
    if d:
        threads = d["threads"]
        rows.append(_row(f"1. directory floor: binds/s ({threads} threads)", binds, "/s"))
        rows.append(
            _row(
                "1. directory: search + bind/s (agent's work)", search_binds, "/s", "binds/s", binds
            )
        )
    if c:
        rows.append(_row("2. crypto floor: RSA-2048 OAEP decrypts/s, one core", decrypts, "/s"))
    if a:
        rows.append(
            _row(
                "3. agent alone: validations/s, one core",
                alone,
                "/s",
                "directory search + bind/s",
                search_binds,
            )
        )
        rows.append(_row("3. agent alone vs crypto", alone, "/s", "RSA decrypts/s", decrypts))
        rows.append(_row("3. agent alone: agent CPU", a["agent_cpu_percent"], "%", "one core", 100))
    one = _ok(steps, "e2e_1")
    three = _ok(steps, "e2e_3")
    for label, e, floor_name, floor in (
        ("1 agent", one, "agent alone", alone),
        (
            "3 agents",
            three,
            "min(3 x agent alone, directory search + bind/s)",
            min(3 * alone, search_binds) if alone and search_binds else None,
        ),
    ):
        if not e:
            continue
        rows.append(
            _row(
                f"4. end to end, {label}: sign-ins/s",
                e["peak_success_rps"],
                "/s",
                floor_name,
                floor,
            )
        )
        unloaded = (e.get("unloaded_latency_ms") or {}).get("p50")
        lat = e.get("half_rate_latency_ms") or {}
        for p in ("p50", "p99"):
            rows.append(
                _row(
                    f"4. end to end, {label}: {p} latency at {e['half_rate_rps']:g}/s (half peak)",
                    lat.get(p),
                    "ms",
                    "unloaded p50 (concurrency 1)",
                    unloaded,
                )
            )
    if one and three:
        rows.append(
            _row(
                "4. end to end: 3 agents vs 1 agent",
                three["peak_success_rps"],
                "/s",
                "1 agent sign-ins/s",
                one["peak_success_rps"],
            )
        )
    m = _ok(steps, "message_size")
    if m:
        for n, size in m.items():
            rows.append(
                _row(
                    f"5. request message, {n} agent{'s' if n != '1' else ''}",
                    size["bytes"],
                    "bytes",
                    "design estimate 0.5 KB + 0.35 KB/agent",
                    size["design_bytes"],
                )
            )
    return rows


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown(doc: dict[str, Any]) -> str:
    """The results as a Markdown page: the figures table, then failed steps."""
    host = doc["host"]
    lines = [
        "# PTA benchmark",
        "",
        f"{doc['started_at']}, {host['cpus']} CPUs, Python {host['python']}, "
        f"tenant {doc['tenant']['domain']}, {doc['elapsed_s']} s. "
        "Everything (servers, STS, CA, agents, load) runs on this one machine.",
        "",
        "| figure | value | floor | ratio |",
        "|---|---:|---|---:|",
    ]
    for row in doc["figures"]:
        floor = (
            f"{row['floor']} = {_fmt(row['floor_value'])}"
            if row["floor_value"] is not None
            else row["floor"] or "—"
        )
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "—"
        lines.append(
            f"| {row['figure']} | {_fmt(row['value'])} {row['unit']} | {floor} | {ratio} |"
        )
    problems = [(name, step) for name, step in doc["steps"].items() if step["status"] != "ok"]
    if problems:
        lines += ["", "## Steps that did not produce a figure", ""]
        for name, step in problems:
            error = str(step.get("error", "")).replace("\n", " ")
            lines.append(f"- `{name}` {step['status']}: {error}")
    return "\n".join(lines) + "\n"


async def _with_own_stack(
    state: Path, run: Callable[[Path], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Start a private stack in ``state`` (a fresh temporary folder), run, stop it."""
    from infra.ports import free_port_base
    from infra.stack import Stack

    stack = Stack(state, free_port_base(), durable=False)
    print(f"bench: starting a private stack in {state} ...", file=sys.stderr, flush=True)
    try:
        await stack.up()
    except Exception as exc:
        stack.down()
        # The folder stays: its logs say why (e.g. a port taken meanwhile).
        raise StackStartFailed(f"{exc} (logs kept in {state / 'logs'})") from exc
    try:
        return await run(stack.stack_json_path)
    finally:
        stack.purge()  # the state folder and, as root, PostgreSQL's data outside it


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every step produced its figures, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--stack-json", type=Path, default=DEFAULT_STACK_JSON)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tenant", default="contoso.test")
    parser.add_argument("--quick", action="store_true", help="about 1 minute instead of 3")
    parser.add_argument("--own-stack", action="store_true", help="start a private stack")
    parser.add_argument("--budget", type=float, default=290.0, help="seconds for all steps")
    parser.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated subset of {','.join(STEPS)} (default: all)",
    )
    args = parser.parse_args(argv)
    only = frozenset(s.strip() for s in args.steps.split(",") if s.strip())
    if not only or only - set(STEPS):
        parser.error(f"--steps: choose from {', '.join(STEPS)}")
    settings = Settings.quick(args.budget) if args.quick else Settings(budget_s=args.budget)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    async def bench_on(stack_json: Path) -> dict[str, Any]:
        target = load_stack(stack_json)
        return await run_bench(target, target.tenant(args.tenant), settings, out, only)

    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            if args.own_stack:
                state = Path(tempfile.mkdtemp(prefix="pta-bench-"))
                doc = runner.run(_with_own_stack(state, bench_on))
            else:
                doc = runner.run(bench_on(args.stack_json))
        except (TargetError, StackStartFailed) as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    (out / "results.md").write_text(text)
    print(text)
    print(f"bench: wrote {out / 'results.json'} and {out / 'results.md'}", file=sys.stderr)
    return 0 if all(s["status"] == "ok" for s in doc["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
