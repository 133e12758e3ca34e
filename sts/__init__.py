"""The security token service (STS): OAuth 2.0 / OpenID Connect endpoints in Entra's shape.

Run it with `pta-sts` (settings from `PTA_STS_*` variables, listed in `sts.settings`).
Stateless: every replica reads the same PostgreSQL, so any number can run behind a load
balancer. Endpoints so far (DESIGN.md "Cloud endpoints"):

| method path | module |
|---|---|
| `GET /{tenant}/v2.0/.well-known/openid-configuration` | `sts.discovery` |
| `GET /{tenant}/discovery/v2.0/keys` | `sts.discovery` |
| `GET`, `POST /{tenant}/oauth2/v2.0/authorize` (sign-in pages) | `sts.authorize` |
| `POST /{tenant}/oauth2/v2.0/token` (password, device code, code, refresh) | `sts.token` |
| `POST /{tenant}/oauth2/v2.0/devicecode` | `sts.devicecode` |
| `GET`, `POST /devicelogin` (HTML form for people) | `sts.devicelogin` |

`{tenant}` is the tenant GUID or a verified domain (`sts.tenants`). Errors are Entra-shaped
JSON, or an HTML page on browser routes (`sts.errors`). Only the tenants' cloud-only admins
sign in for now (`sts.admins`); the dispatch of synced users' passwords to the agents comes
with the sign-in pages.

Modules: `app` (create_app, lifetimes), `main` (the console script), `settings`,
`correlation` (request ids, log context), `errors`, `forms` (strict form parsing),
`tenants`, `clients`, `admins`, `issuance` (scopes, claims), `signing` (ES256 keys, JWKS),
`discovery`, `token`, `devicecode`, `devicelogin`, `pages` (HTML), `queries` (all SQL),
`authorize` (browser sign-in), `codes` (authorization codes, refresh tokens), `pkce`.
"""
