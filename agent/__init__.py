"""pta-agent: the on-premises pass-through authentication agent (CLI and daemon).

What it does (docs/design.md §3): ``pta-agent register`` obtains a tenant admin's
token from the STS, makes an RSA-2048 key and a CSR locally and registers with the CA,
which returns the agent's client certificate; ``pta-agent run`` opens the directory,
bootstraps over mutual TLS for scoped broker credentials, consumes its tenant's sign-in
requests (decrypt, validate against the directory, reply with a MAC), sends heartbeats,
bootstraps again before the credentials expire and syncs the directory's users to the
cloud periodically; ``sync`` does that sync once, ``test-logon`` checks one username and
password against the directory, ``status`` and ``unregister`` show and end a
registration. The agent does not renew its certificate yet: it logs ``renewal_due``
from 30 days before expiry and must be registered again when the certificate expires.

Modules, one concept each: ``cli`` (commands), ``settings`` (``PTA_AGENT_*``), ``state``
(the state folder), ``https`` (pinned HTTPS and its errors), ``signin`` (admin tokens
from the STS), ``cloud`` (the CA API), ``registration`` (register/unregister flows),
``broker`` (the AMQP link), ``consumer`` (one sign-in request), ``replay`` (request ids
seen), ``directory`` (the interface), ``ldap_directory`` and ``ldap_verdicts`` (LDAP),
``logon`` (test-logon's explanations), ``sync`` (users to the cloud), ``heartbeat``,
``runner`` (the daemon), ``errors``.

Run: ``pta-agent register --tenant contoso.test --server https://ca.example
--ca-bundle service-ca.pem``, then ``pta-agent run``; ``pta-agent --help`` for the rest.
The agent never imports ``sts`` or ``ca``: it talks to them over HTTPS only.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("pta")
except metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
