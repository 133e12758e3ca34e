"""The package import rules (docs/architecture.md, "Packages and import direction"),
checked by walking every module's imports.

common imports none of the others; sts, ca, agent and updater import only themselves and
common; infra imports nothing from the services (it starts them as processes); nothing
imports the tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "sts", "ca", "agent", "updater", "infra", "bench")
PROJECT = {*PACKAGES, "tests"}
# An allow-list: which of the project's own packages each package may import (third-party
# libraries are not restricted here). A package not named cannot be imported, so a new
# dependency between parts (say sts -> bench) fails this test until it is argued for here.
ALLOWED: dict[str, set[str]] = {
    "common": {"common"},
    "sts": {"sts", "common"},
    "ca": {"ca", "common"},
    "agent": {"agent", "common"},
    "updater": {"updater", "common"},
    "infra": {"infra", "common"},
    # The benchmarks drive the stack from outside, like a client or an operator would;
    # they may read the agent's directory defaults and start a private stack (infra).
    "bench": {"bench", "common", "agent", "infra"},
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package: str) -> None:
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = (_imported_top_levels(path) & PROJECT) - ALLOWED[package]
        if bad:
            violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert violations == []


def test_the_walker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import sts.app\nfrom ca import x\nfrom . import y\n")
    assert _imported_top_levels(sample) == {"sts", "ca"}


def test_the_allow_list_refuses_what_it_does_not_name() -> None:
    assert {"bench"} - ALLOWED["sts"] == {"bench"}
    assert "tests" not in set().union(*ALLOWED.values())
