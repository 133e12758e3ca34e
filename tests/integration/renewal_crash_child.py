"""A renewal that SIGKILLs its own process at one step (test_agent_renewal.py).

``python -m tests.integration.renewal_crash_child <state_dir> <step>``: loads the state
folder, renews over mutual TLS with the real CA, and at ``checkpoint(step)`` sends itself
SIGKILL, so the folder and the CA are left exactly as a crash at that point leaves them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
from pathlib import Path

from agent import renewal, state
from agent.cloud import CaClient


async def main(state_dir: Path, kill_at: renewal.Step) -> None:
    registration = state.load(state_dir)

    def checkpoint(step: renewal.Step) -> None:
        if step is kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    async with CaClient(
        registration.record.ca_url,
        ssl_context=registration.mutual_tls(),
        trust="test",
        timeout_s=30,
    ) as ca:
        await renewal.renew(ca, registration, now=dt.datetime.now(dt.UTC), checkpoint=checkpoint)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), renewal.Step(sys.argv[2])))
    sys.exit(3)  # not killed: the step was never reached
