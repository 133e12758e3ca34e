"""pta-updater: keeps an on-premises agent current (docs/design.md §3.4, "Update").

Planned: ask `GET {ca}/updates/latest` over mutual TLS every hour, verify the wheel's
detached Ed25519 signature against the pinned publisher key, install side by side, restart
the agent, check its health and roll back on failure, one agent per tenant at a time.
It handles no sign-ins. Not built yet: no issue has asked for it so far.
"""
