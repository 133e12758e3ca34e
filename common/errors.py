"""`DocumentedError`: the base of errors whose class docstring is their default message.

Each subclass names one event; the first paragraph of its docstring (on one line) is the
message, written as what happened and what to do. `detail` adds the specifics of one
occurrence, after the message; it never carries a password, token or key. A subclass
changes how the two are joined with `detail_separator`, and how much of the detail is
shown with `shown_detail` (e.g. `common.wire.WireError` truncates what it echoes).
"""

from __future__ import annotations

from typing import ClassVar


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line ("" for none)."""
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


class DocumentedError(Exception):
    """The operation failed."""

    detail_separator: ClassVar[str] = " "

    def __init__(self, detail: str = "", *, message: str | None = None) -> None:
        self.detail = detail
        default = message if message is not None else self.default_message()
        shown = self.shown_detail(detail)
        text = f"{default}{self.detail_separator}{shown}" if shown else default
        super().__init__(text.strip())

    @classmethod
    def default_message(cls) -> str:
        """The first paragraph of the class docstring (the class name when it has none)."""
        return first_paragraph(cls.__doc__) or cls.__name__

    def shown_detail(self, detail: str) -> str:
        """The part of `detail` the message shows (all of it here)."""
        return detail
