"""`pta-load` against the session stack: a short open-loop run where every sign-in succeeds.

About 3 s and 30 requests of good passwords over the bulk users, through the real CLI
(its console script), so that `make test` keeps the load tool working end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack import Stack

pytestmark = pytest.mark.stack

PTA_LOAD = str(Path(sys.executable).with_name("pta-load"))
REQUESTS = 30


def test_every_request_of_a_short_run_succeeds(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    result = subprocess.run(
        [
            PTA_LOAD,
            "--stack-json",
            str(stack.stack_json_path),
            "--rate",
            "10",
            "--requests",
            str(REQUESTS),
            "--duration",
            "5",
            "--mix",
            "good=100",
            "--json",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert doc["requests"] == REQUESTS and doc["sent"] == REQUESTS and doc["dropped"] == 0
    assert doc["results"] == {"success": REQUESTS}, doc["unexpected"]
    assert doc["unexpected_errors"] == 0
    assert doc["latency_ms"]["count"] == REQUESTS
    assert 0 < doc["latency_ms"]["p50"] <= doc["latency_ms"]["p99"] <= doc["latency_ms"]["max"]
    assert doc["throughput_rps"] > 0
    # Round-robin over both STS replicas of the stack.
    assert len(doc["token_urls"]) == len(json.loads(stack.stack_json_path.read_text())["sts_urls"])


def test_a_remote_sts_is_refused_before_any_traffic(stack: Stack, tmp_path: Path) -> None:
    doc = json.loads(stack.stack_json_path.read_text())
    doc["sts_urls"] = ["https://login.example.com"]
    path = tmp_path / "stack.json"
    path.write_text(json.dumps(doc))
    result = subprocess.run(
        [PTA_LOAD, "--stack-json", str(path), "--requests", "1", "--quiet"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr
