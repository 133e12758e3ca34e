"""An agent daemon run as a second process from a COPIED state folder (test_agent_clone.py).

``python -m tests.integration.clone_child <state_dir>`` reads the directory settings as a
JSON object on stdin (no secret on the command line) and runs ``runner.run`` with a fast
heartbeat until it is killed. Its own process: its own random instance id.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from agent import runner
from agent.settings import load_settings


async def main(state_dir: Path) -> None:
    overrides = json.loads(sys.stdin.read())
    settings = load_settings(state_dir=state_dir, heartbeat_interval_s=0.3, **overrides)
    await runner.run(settings, stop=asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
