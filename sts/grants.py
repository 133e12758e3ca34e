"""The OAuth 2.0 grant types the token endpoint serves, named once.

Discovery advertises exactly these (`grant_types_supported`), the token endpoint
dispatches on them, and the authorization code module owns the two it redeems.
"""

from __future__ import annotations

from typing import Final

AUTHORIZATION_CODE_GRANT: Final = "authorization_code"  # RFC 6749 section 4.1.3
REFRESH_TOKEN_GRANT: Final = "refresh_token"  # noqa: S105 -- a grant type name, not a secret
PASSWORD_GRANT: Final = "password"  # noqa: S105 -- RFC 6749 section 4.3
DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 3.4

CODE_GRANTS: Final = (AUTHORIZATION_CODE_GRANT, REFRESH_TOKEN_GRANT)
SUPPORTED_GRANTS: Final = (PASSWORD_GRANT, DEVICE_CODE_GRANT, *CODE_GRANTS)
