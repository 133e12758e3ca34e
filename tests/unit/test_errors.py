"""common.errors.DocumentedError: the docstring is the message, `detail` follows it."""

from __future__ import annotations

from agent.errors import AgentError
from common.errors import DocumentedError
from common.pki import PkiError
from common.tls import TlsConfigError
from common.wire import WireError


class Refused(DocumentedError):
    """The server refused.

    Further paragraphs are not part of the message.
    """


class Bare(DocumentedError):
    pass


def test_first_paragraph_is_the_message_and_detail_follows() -> None:
    assert str(Refused()) == "The server refused."
    assert str(Refused("(HTTP 403)")) == "The server refused. (HTTP 403)"
    assert Refused("(HTTP 403)").detail == "(HTTP 403)"
    assert str(Refused("ignored?", message="Told otherwise.")) == "Told otherwise. ignored?"
    assert str(Bare()) == "Bare"


def test_the_error_families_share_it() -> None:
    for family in (PkiError, TlsConfigError, WireError, AgentError):
        assert issubclass(family, DocumentedError)
    assert str(WireError("bad field")) == (
        "A message is not a valid version-1 PTA message and was refused.: bad field"
    )
    assert str(WireError("x" * 1000)).endswith("...")
    assert len(str(WireError("x" * 1000))) < 400
