"""``pta-load``: fire sign-ins at the stack's STS token endpoint and report what came back.

Examples (the stack from `make up`; its stack.json is read for URLs, CA bundle, users):
  pta-load --rate 200 --duration 30                      # open loop, 200 arrivals/s
  pta-load --concurrency 32 --duration 20 --json out.json --plot out.png
  pta-load --rate 100 --mix good=90,wrong=10 --tenant fabrikam.test

Open loop (``--rate``) schedules arrivals at fixed times and measures latency from the
scheduled time, so back-pressure cannot hide latency; ``--max-inflight`` caps outstanding
requests and counts arrivals beyond it as dropped. Closed loop (``--concurrency``) keeps
N requests outstanding. See ``bench.engine`` for classification and ``bench.users`` for
the mix and how wrong passwords are kept below every lockout threshold.

Exit codes: 0 every request got an expected answer; 1 unexpected errors occurred (or
nothing completed); 2 bad options or an unusable stack.json. Traffic goes only to the
loopback URLs of stack.json; bounded by --duration (at most 600 s) and --requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import engine
from bench.plot import PlotUnavailable, plot_timeline
from bench.target import DEFAULT_STACK_JSON, TargetError, load_stack
from bench.users import DEFAULT_MAX_WRONG_PER_USER, SUCCESS, MixError, UserPicker, parse_mix

__all__ = ["CODE_MEANINGS", "main", "run_with_progress"]

# What each AADSTS code means here (docs/design.md §5).
CODE_MEANINGS: Final = {
    SUCCESS: "signed in",
    "AADSTS50126": "invalid username or password",
    "AADSTS50144": "password expired",
    "AADSTS50055": "must change password",
    "AADSTS50053": "locked (directory or smart lockout)",
    "AADSTS50057": "account disabled or expired",
    "AADSTS50034": "unknown user",
    "AADSTS80001": "no agent connected",
    "AADSTS80002": "agent timeout (deadline passed)",
    "AADSTS80003": "agent reply failed MAC",
    "AADSTS80004": "invalid username (agent)",
    "AADSTS80005": "agent error",
    "AADSTS80007": "directory unavailable",
    "AADSTS80010": "agent could not decrypt",
    "AADSTS80011": "no key for the agent",
    "AADSTS53003": "legacy authentication blocked",
}

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

_HELP = """Fire sign-ins (password grant) at the stack's STS token endpoint and report
throughput, latency percentiles and the answers by AADSTS code.

\b
Examples (stack.json of `make up` gives the URLs, the CA bundle and the users):
  pta-load --rate 200 --duration 30                # open loop, 200 arrivals/s
  pta-load --concurrency 32 --duration 20 --json out.json --plot out.png
  pta-load --rate 100 --mix good=90,wrong=10 --tenant fabrikam.test

Open loop (--rate) measures latency from each request's scheduled time, so
back-pressure cannot hide it; arrivals beyond --max-inflight are dropped and
counted. Closed loop (--concurrency) keeps N requests outstanding. Wrong
passwords go to a separate quarter of the bulk users, at most
--max-wrong-per-user each, below the smart lockout and the directory lockout.

Exit codes: 0 every request got an expected answer; 1 unexpected errors (or
nothing completed); 2 bad options or an unusable stack.json. Traffic goes only
to stack.json's loopback URLs, for at most 600 s.
"""


async def run_with_progress(
    config: engine.LoadConfig, console: Console | None, *, handle_sigint: bool = False
) -> engine.LoadResult:
    """Run ``config`` with a live progress bar on ``console`` (None: no display)."""
    progress = engine.Progress()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_sigint:
        # Ctrl-C stops sending; in-flight requests finish and the partial run is reported.
        loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        if console is None:
            return await engine.run_load(config, progress=progress, stop=stop)
        return await _with_display(config, console, progress, stop)
    finally:
        if handle_sigint:
            loop.remove_signal_handler(signal.SIGINT)


async def _with_display(
    config: engine.LoadConfig,
    console: Console,
    progress: engine.Progress,
    stop: asyncio.Event,
) -> engine.LoadResult:
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
        transient=False,
    )
    task = bar.add_task("pta-load", total=1.0, stats="starting")
    window: list[tuple[float, int]] = []

    def refresh() -> None:
        now = time.monotonic()
        window.append((now, progress.completed))
        while len(window) > 2 and now - window[0][0] > 1.0:
            window.pop(0)
        (t_a, n_a), (t_b, n_b) = window[0], window[-1]
        rate = (n_b - n_a) / (t_b - t_a) if t_b > t_a else 0.0
        elapsed = max(0.0, now - progress.started_at) if progress.started_at else 0.0
        done = elapsed / config.duration_s
        if config.max_requests:
            done = max(done, (progress.sent + progress.dropped) / config.max_requests)
        errors = f"[red]{progress.unexpected}[/]" if progress.unexpected else "0"
        dropped = f", [yellow]dropped {progress.dropped}[/]" if progress.dropped else ""
        state = "draining" if done >= 1.0 and not progress.is_done else ""
        bar.update(
            task,
            completed=min(1.0, done),
            stats=f"{rate:7.0f}/s  done {progress.completed}  in flight {progress.inflight}  "
            f"unexpected {errors}{dropped} {state}",
        )

    async def ticker() -> None:
        while True:
            refresh()
            await asyncio.sleep(0.25)

    with bar:
        ticking = asyncio.create_task(ticker())
        try:
            result = await engine.run_load(config, progress=progress, stop=stop)
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking
        refresh()
    return result


def render(result: engine.LoadResult, console: Console) -> None:
    """Print the final tables: run, latency, results by code, unexpected errors."""
    doc = result.as_json()
    c = result.config
    mode = (
        f"open loop, {c.rate_rps:g}/s {c.arrivals}, max in flight {c.max_inflight}"
        if c.mode == "open"
        else f"closed loop, concurrency {c.concurrency}"
    )
    run = Table(title="pta-load", show_header=False, title_justify="left")
    run.add_column(style="bold")
    run.add_column()
    run.add_row("mode", mode)
    run.add_row("tenant", f"{c.tenant.domain} ({c.tenant.id}), mix {c.mix}")
    run.add_row("requests", f"{result.requests} answered of {result.sent} sent")
    if result.dropped:
        run.add_row("dropped", f"[yellow]{result.dropped} (max in flight reached)[/]")
    run.add_row("duration", f"{result.duration_s:.2f} s")
    run.add_row("throughput", f"{result.throughput_rps:.1f}/s ({result.success_rps:.1f}/s success)")
    run.add_row("load tool CPU", f"{result.generator_cpu_percent:.0f} % of one core")
    if result.max_schedule_lag_ms > 10:
        run.add_row(
            "generator lag",
            f"[yellow]{result.max_schedule_lag_ms:.0f} ms max[/] (the load tool was busy; "
            "latency includes it)",
        )
    if result.wrong_capped:
        run.add_row("wrong capped", f"{result.wrong_capped} wrong draws sent as good (lockout cap)")
    if result.healed or result.heal_failed:
        run.add_row("healed", f"{result.healed} users (failed {result.heal_failed})")
    if result.interrupted:
        run.add_row("interrupted", "[yellow]stopped early (Ctrl-C)[/]")
    console.print(run)

    latency = Table(title="latency (ms)", title_justify="left")
    latency.add_column("measured from")
    for name in ("p50", "p90", "p99", "p99.9", "max", "mean"):
        latency.add_column(name, justify="right")
    for label, summary in (
        ("scheduled time" if c.mode == "open" else "send", doc["latency_ms"]),
        ("send (service time)", doc["service_time_ms"] if c.mode == "open" else None),
    ):
        if summary:
            latency.add_row(
                label,
                *(f"{summary[k]:.1f}" for k in ("p50", "p90", "p99", "p99_9", "max", "mean")),
            )
    console.print(latency)

    results = Table(title="results", title_justify="left")
    results.add_column("answer")
    results.add_column("meaning")
    results.add_column("count", justify="right")
    results.add_column("share", justify="right")
    for outcome, count in sorted(result.results.items(), key=lambda kv: -kv[1]):
        share = count / result.requests if result.requests else 0.0
        results.add_row(outcome, CODE_MEANINGS.get(outcome, ""), str(count), f"{share:.1%}")
    console.print(results)

    if result.unexpected:
        bad = Table(title="[red]unexpected errors[/]", title_justify="left")
        bad.add_column("reason (kind->answer, or fault)")
        bad.add_column("count", justify="right")
        for reason, count in sorted(result.unexpected.items(), key=lambda kv: -kv[1]):
            bad.add_row(reason, str(count))
        console.print(bad)
    else:
        console.print("[green]unexpected errors: 0[/]")


def _positive_float(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def check(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is not None and not value > 0:
            raise click.BadParameter(f"{name} must be more than 0")
        return value

    return check


@click.command(context_settings=_CONTEXT, help=_HELP)
@click.option(
    "--stack-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_STACK_JSON,
    show_default=True,
    envvar="PTA_STACK_JSON",
    show_envvar=True,
    help="The stack to load (written by `make up`).",
)
@click.option(
    "--tenant", metavar="DOMAIN|ID|NAME", help="Tenant to sign in to [default: the first]."
)
@click.option(
    "--rate",
    type=float,
    callback=_positive_float("--rate"),
    help="Open loop: arrivals per second [default: 50 unless --concurrency].",
)
@click.option("--concurrency", type=int, help="Closed loop: requests kept outstanding.")
@click.option(
    "--duration",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds of sending (at most 600).",
)
@click.option("--requests", "max_requests", type=int, help="Stop after this many requests.")
@click.option(
    "--mix",
    default="good=100",
    show_default=True,
    help="Kinds and weights: good, wrong, unknown, expired, must_change, locked, disabled.",
)
@click.option(
    "--arrivals",
    type=click.Choice(["uniform", "poisson"]),
    default="uniform",
    show_default=True,
    help="Open loop spacing: exact 1/rate, or exponential gaps.",
)
@click.option(
    "--max-inflight",
    type=int,
    default=1000,
    show_default=True,
    help="Open loop: outstanding requests at most; later arrivals are dropped.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=15.0,
    show_default=True,
    help="Seconds one request may take.",
)
@click.option(
    "--max-wrong-per-user",
    type=int,
    default=DEFAULT_MAX_WRONG_PER_USER,
    show_default=True,
    help="Wrong passwords per user per run (1..3: below the stack's smart lockout at 4 "
    "and the directory's lockout at 5).",
)
@click.option(
    "--no-heal",
    is_flag=True,
    help="Skip the right-password sign-in after the run for users given wrong passwords.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of poisson arrivals.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write results."
)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def main(
    stack_json: Path,
    tenant: str | None,
    rate: float | None,
    concurrency: int | None,
    duration: float,
    max_requests: int | None,
    mix: str,
    arrivals: str,
    max_inflight: int,
    timeout_s: float,
    max_wrong_per_user: int,
    no_heal: bool,
    seed: int,
    json_path: Path | None,
    plot_path: Path | None,
    quiet: bool,
) -> None:
    out = Console()
    err = Console(stderr=True)
    if rate is None and concurrency is None:
        rate = 50.0
    try:
        target = load_stack(stack_json)
        config = engine.config_for(
            target,
            tenant,
            parse_mix(mix),
            duration_s=duration,
            max_requests=max_requests,
            rate_rps=rate,
            concurrency=concurrency,
            max_inflight=max_inflight,
            timeout_s=timeout_s,
            arrivals="poisson" if arrivals == "poisson" else "uniform",
            seed=seed,
            max_wrong_per_user=max_wrong_per_user,
            heal=not no_heal,
        )
        # Fail on users before any traffic (a mix the tenant has no users for).
        UserPicker(config.tenant, config.mix, max_wrong_per_user=max_wrong_per_user)
    except (TargetError, engine.LoadError, MixError) as exc:
        raise click.UsageError(str(exc)) from None
    result = _run(config, None if quiet else err)
    doc = result.as_json()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
        err.print(f"results: {json_path}")
    if plot_path is not None:
        try:
            plot_path.parent.mkdir(parents=True, exist_ok=True)
            plot_timeline(doc, plot_path)
            err.print(f"plot: {plot_path}")
        except PlotUnavailable as exc:
            err.print(f"[yellow]no plot: {exc}[/]")
    render(result, out)  # last: files are written even if stdout is a closed pipe
    if result.unexpected_errors or result.requests == 0:
        sys.exit(1)


def _run(config: engine.LoadConfig, console: Console | None) -> engine.LoadResult:
    """Run on uvloop when it is installed (the client is CPU-bound at high rates)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_with_progress(config, console, handle_sigint=True))


if __name__ == "__main__":
    main()
