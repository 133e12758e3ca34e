"""Reading the services' JSON log lines in tests."""

from __future__ import annotations

import json


def logged_event(text: str, event: str) -> bool:
    """True if a JSON log line of `text` has this event (whatever the JSON spacing)."""
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            if json.loads(line).get("event") == event:
                return True
        except ValueError:
            continue
    return False
