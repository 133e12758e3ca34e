"""The agent's error base class: every failure the operator can act on derives from it.

Each subclass names the event and its class docstring (first paragraph) is the default
message, written as what happened and what to do (docs/contributing.md §5). ``detail`` adds the
specifics of one occurrence; it never carries a password, token or key.
"""

from __future__ import annotations


class AgentError(Exception):
    """The agent could not complete the operation."""

    def __init__(self, detail: str = "", *, message: str | None = None) -> None:
        self.detail = detail
        default = message if message is not None else first_paragraph(type(self).__doc__)
        super().__init__(f"{default} {detail}".strip())


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line: the default message of an error class."""
    if not doc:
        return "The agent could not complete the operation."
    return " ".join(doc.strip().split("\n\n")[0].split())
