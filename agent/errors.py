"""The agent's error base class: every failure the operator can act on derives from it.

Each subclass names the event and its class docstring (first paragraph) is the default
message, written as what happened and what to do (docs/contributing.md §5). ``detail`` adds the
specifics of one occurrence; it never carries a password, token or key.
"""

from __future__ import annotations

from common.errors import DocumentedError
from common.errors import first_paragraph as _first_paragraph

_DEFAULT = "The agent could not complete the operation."


class AgentError(DocumentedError):
    """The agent could not complete the operation."""

    @classmethod
    def default_message(cls) -> str:
        return first_paragraph(cls.__doc__)


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line: the default message of an error class."""
    return _first_paragraph(doc) or _DEFAULT
