"""`pta-stack`: start, stop and inspect the private dev/test stack (what `make up` calls).

    pta-stack up        start RabbitMQ, PostgreSQL and slapd privately, seed, write stack.json
    pta-stack status    one line per component: health, endpoint, detail
    pta-stack logs      list log files, or show one (`pta-stack logs rabbitmq -n 50`)
    pta-stack down      stop everything the stack started (--purge: and delete its data)

The state folder (default ./.stack, or PTA_STACK_DIR) holds data, logs, keys and
stack.json; its ports are fixed at the first `up` (--port-base, default 27100). As root,
PostgreSQL runs as the stack user with its data outside the checkout, in a folder under
/var/lib/pta-stack (PTA_STACK_DATA_ROOT) recorded in <state>/layout.json (infra.stackuser).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from infra.server import StackError
from infra.stack import Stack

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".stack"),
    envvar="PTA_STACK_DIR",
    show_default=True,
    help="Folder holding the stack's data, logs and stack.json.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run the pass-through authentication stack privately on this machine.

    Every server listens on 127.0.0.1 on its own ports, never a default port, and never
    touches a system-wide RabbitMQ, PostgreSQL or slapd that may already run.
    """


@main.command()
@state_dir_option
@click.option(
    "--port-base",
    type=click.IntRange(1024, 65000),
    default=None,
    help="First of 22 consecutive loopback ports (default 27100; fixed at the first up).",
)
@click.option(
    "--ephemeral", is_flag=True, help="Trade durability for speed (fsync off): for tests."
)
@click.option("--no-install", is_flag=True, help="Do not apt-get install missing server packages.")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="PTA_STACK_DATA_ROOT",
    help="As root: where PostgreSQL's data folder is made, outside the checkout, for the "
    "stack user (default /var/lib/pta-stack; fixed at the first up).",
)
def up(
    state_dir: Path,
    port_base: int | None,
    ephemeral: bool,
    no_install: bool,
    data_root: Path | None,
) -> None:
    """Start the stack (idempotent) and write <state-dir>/stack.json."""
    console = _console()
    try:
        stack = Stack(
            state_dir,
            port_base,
            durable=not ephemeral,
            data_root=data_root.absolute() if data_root else None,
        )
        report = asyncio.run(stack.up(install_packages=not no_install))
    except StackError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)
    if report.was_running and not report.started:
        console.print("stack already running; nothing to start")
    elif report.was_running:
        console.print(f"stack was running; started {', '.join(report.started)}")
    else:
        console.print(f"stack up in {report.elapsed_s:.1f} s")
    _print_status(stack, console)
    console.print(f"stack.json: {stack.stack_json_path}")


@main.command()
@state_dir_option
@click.option(
    "--purge",
    is_flag=True,
    help="Also delete the state folder and PostgreSQL's data folder: all data, demo "
    "credentials and agents (the next up starts afresh).",
)
def down(state_dir: Path, purge: bool) -> None:
    """Stop every process the stack started; the data stays for the next up."""
    if not (state_dir / "layout.json").exists():
        click.echo(f"no stack in {state_dir}")
        return
    stack = Stack(state_dir)
    pids = stack.purge() if purge else stack.down()
    click.echo(f"stopped {len(pids)} processes" if pids else "stack was not running")
    if purge:
        removed = [str(stack.state_dir)]
        if stack.stack_user_dir is not None:
            removed.append(str(stack.stack_user_dir))
        click.echo(f"removed {' and '.join(removed)}")


@main.command()
@state_dir_option
def status(state_dir: Path) -> None:
    """Print a table of components, endpoints and health; exit 1 if any is unhealthy."""
    if not (state_dir / "layout.json").exists():
        click.echo(f"no stack in {state_dir} (run: pta-stack up)")
        sys.exit(1)
    stack = Stack(state_dir)
    if not _print_status(stack, _console()):
        sys.exit(1)


def _console() -> Console:
    # Off a terminal (make, CI logs) rich would wrap at 80 columns and cut the URLs.
    return Console() if sys.stdout.isatty() else Console(width=160)


def _print_status(stack: Stack, console: Console) -> bool:
    healths = asyncio.run(stack.status())
    states = stack.supervisor.states() if stack.supervisor.is_running() else {}
    table = Table(title=f"stack in {stack.state_dir}")
    for column in ("component", "health", "process", "pid", "endpoint", "detail"):
        table.add_column(column)
    names = {h.name for h in healths}
    for h in healths:
        st = states.get(h.name)
        table.add_row(
            h.name,
            "[green]healthy[/green]" if h.is_healthy else "[red]unhealthy[/red]",
            st.state if st else "-",
            str(st.pid) if st and st.pid else "-",
            h.endpoint,
            h.detail,
        )
    for name, st in states.items():
        if name not in names:
            ok = st.state == "RUNNING"
            table.add_row(
                name,
                "[green]healthy[/green]" if ok else "[red]unhealthy[/red]",
                st.state,
                str(st.pid or "-"),
                "",
                "",
            )
    console.print(table)
    return all(h.is_healthy for h in healths) and all(s.state == "RUNNING" for s in states.values())


@main.command()
@state_dir_option
@click.argument("name", required=False)
@click.option("-n", "--lines", default=40, show_default=True, help="Lines to show.")
def logs(state_dir: Path, name: str | None, lines: int) -> None:
    """List the log files, or print the last lines of one (e.g. `logs sts`)."""
    logs_dir = state_dir / "logs"
    if name is None:
        for path in sorted(logs_dir.glob("*.log")):
            click.echo(f"{path.stem:<20} {path}")
        return
    path = logs_dir / f"{name}.log"
    if not path.exists():
        raise click.BadParameter(f"no log {path}; `pta-stack logs` lists them", param_hint="NAME")
    with path.open("rb") as f:
        tail = f.readlines()[-lines:]
    click.echo(b"".join(tail).decode(errors="replace"), nl=False)
