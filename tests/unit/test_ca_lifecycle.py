"""Clone detection and agent state, pure (ca.lifecycle)."""

from __future__ import annotations

import datetime as dt

from ca.lifecycle import MAX_INSTANCES, agent_state, sight
from ca.queries import AgentRecord

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
WINDOW = 1200.0


def _at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def _run(sequence: list[tuple[float, str]]) -> list[str | None]:
    """Feed (time, instance) sightings; the clone_of answer of each."""
    seen: dict[str, dt.datetime] = {}
    answers = []
    for at, instance in sequence:
        sighting = sight(seen, instance, now=_at(at), window_s=WINDOW)
        seen = sighting.instances
        answers.append(sighting.clone_of)
    return answers


def test_one_process_and_its_restarts_are_never_clones() -> None:
    assert (
        _run([(0, "a"), (600, "a"), (605, "b"), (1200, "b"), (1201, "c"), (1800, "c")])
        == [None] * 6
    )


def test_two_processes_taking_turns_are_clones() -> None:
    assert _run([(0, "a"), (10, "b"), (600, "a"), (610, "b")]) == [None, None, "b", "a"]


def test_three_processes_in_rotation_are_clones() -> None:
    assert _run([(0, "a"), (10, "b"), (20, "c"), (600, "a")])[-1] == "c"


def test_an_instance_back_after_the_window_is_not_a_clone() -> None:
    # The other one went silent long ago: nothing live to take turns with.
    assert _run([(0, "a"), (10, "b"), (10 + WINDOW + 1, "a")])[-1] is None


def test_instances_are_bounded() -> None:
    seen: dict[str, dt.datetime] = {}
    for n in range(3 * MAX_INSTANCES):
        seen = sight(seen, f"i{n}", now=_at(n), window_s=WINDOW).instances
    assert len(seen) == MAX_INSTANCES and f"i{3 * MAX_INSTANCES - 1}" in seen


def _agent(last: dt.datetime | None, clone_at: dt.datetime | None = None) -> AgentRecord:
    return AgentRecord(
        id="a", tenant_id="t", host="h", version="1", kid="k", cert_serial="1",
        cert_not_after=NOW, registered_at=NOW, last_heartbeat_at=last, last_bootstrap_at=None,
        reported_status="", status_detail="", broker_user=None, suspected_clone_at=clone_at,
    )  # fmt: skip


def test_state() -> None:
    assert agent_state(_agent(None), now=NOW, heartbeat_interval_s=600) == "inactive"
    assert agent_state(_agent(_at(-1200)), now=NOW, heartbeat_interval_s=600) == "active"
    assert agent_state(_agent(_at(-1201)), now=NOW, heartbeat_interval_s=600) == "inactive"
    assert agent_state(_agent(NOW, NOW), now=NOW, heartbeat_interval_s=600) == "suspected_clone"
