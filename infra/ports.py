"""Pick a free port base for a throwaway stack (the test suite's)."""

from __future__ import annotations

import random

from infra.preflight import holder_of
from infra.server import Ports

SPAN = 22


def free_port_base(low: int = 30000, high: int = 60000, tries: int = 50) -> int:
    """A base whose whole range of ports is free on this machine right now."""
    rng = random.SystemRandom()
    for _ in range(tries):
        base = rng.randrange(low, high - SPAN)
        ports = Ports.from_base(base)
        wanted = [
            *ports.listening().values(),
            *range(ports.amqp_ctl_dist, ports.amqp_ctl_dist + 10),
        ]
        if all(holder_of(p) is None for p in wanted):
            return base
    raise RuntimeError("no free range of loopback ports found")
