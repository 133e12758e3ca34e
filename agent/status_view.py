"""What ``pta-agent status`` shows: the local registration beside the cloud's view of it,
as a JSON document (``--json``, a contract for scripts) or as aligned text for a person.
Pure rendering: the caller reads the state folder and asks the CA.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from agent import state
from agent.cloud import AgentView


def when(moment: dt.datetime) -> str:
    """A moment for a person: minutes, UTC."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def status_document(
    loaded: state.Registration, view: AgentView | None, problem: str, now: dt.datetime
) -> dict[str, Any]:
    """The ``--json`` document; ``problem`` is empty when the agent is fine."""
    record = loaded.record
    cloud: dict[str, Any] = {"reachable": view is not None}
    if view is not None:
        cloud.update(view.model_dump(mode="json"))
    # The lifecycle fields under their contract names (issue 10), at the top level too:
    # state and last heartbeat as the cloud sees them ("unknown" when it cannot be asked).
    seen = cloud.get("last_heartbeat_at")
    return {
        "state": cloud.get("state") or (cloud.get("status") if view else None) or "unknown",
        "last_heartbeat_at": seen,
        "certificate_not_after": loaded.not_after.isoformat(),
        "renewal": cloud.get("renewal") or ("pending" if loaded.dir.pending_key.exists() else None),
        "state_dir": str(loaded.dir.path),
        "agent_id": record.agent_id,
        "tenant_id": record.tenant_id,
        "host": record.host,
        "ca_url": record.ca_url,
        "version": record.version,
        "registered_at": record.registered_at.isoformat(),
        "kid": loaded.kid,
        "certificate": {
            "serial": format(loaded.certificate.serial_number, "x"),
            "not_after": loaded.not_after.isoformat(),
            "expired": loaded.not_after <= now,
            "days_left": (loaded.not_after - now).days,
            # A renewal a crash interrupted: the daemon finishes it at its next start.
            "renewal_pending": loaded.dir.pending_key.exists(),
        },
        "cloud": cloud,
        "ok": not problem,
        "problem": problem or None,
    }


def print_status(loaded: state.Registration, view: AgentView | None, now: dt.datetime) -> None:
    """The text form of the status, one aligned row per fact."""
    record = loaded.record
    left = loaded.not_after - now
    cert = (
        f"valid until {when(loaded.not_after)} ({left.days} days left)"
        if left.total_seconds() > 0
        else f"EXPIRED at {when(loaded.not_after)}"
    )
    rows = [
        ("agent", record.agent_id),
        ("tenant", record.tenant_id),
        ("host", record.host),
        ("registered", when(record.registered_at)),
        ("CA", record.ca_url),
        ("certificate", cert),
    ]
    if view is not None:
        seen = (
            f"last heartbeat {when(view.last_heartbeat_at)}"
            if view.last_heartbeat_at is not None
            else "no heartbeat yet"
        )
        state_now = getattr(view, "state", None) or view.status
        rows.append(("cloud", f"{str(state_now).replace('_', ' ')}, {seen}"))
        renewal = getattr(view, "renewal", None)
        if isinstance(renewal, str):
            rows.append(("renewal", renewal.replace("_", " ")))
    else:
        rows.append(("cloud", "unknown (see below)"))
    for name, value in rows:
        click.echo(f"{name:<12} {value}")
