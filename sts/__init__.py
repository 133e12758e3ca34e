"""The security token service (STS): OAuth 2.0 / OpenID Connect endpoints in Entra's shape.

Run it with `pta-sts` (settings from `PTA_STS_*` variables, listed in `sts.settings`).
Stateless: every replica reads the same PostgreSQL, so any number can run behind a load
balancer. Endpoints so far (docs/design.md §6):

| method path | module |
|---|---|
| `GET /{tenant}/v2.0/.well-known/openid-configuration` | `sts.discovery` |
| `GET /{tenant}/discovery/v2.0/keys` | `sts.discovery` |
| `GET`, `POST /{tenant}/oauth2/v2.0/authorize` (sign-in pages) | `sts.authorize` |
| `POST /{tenant}/oauth2/v2.0/token` (password, device code, code, refresh) | `sts.token` |
| `POST /{tenant}/oauth2/v2.0/devicecode` | `sts.devicecode` |
| `GET`, `POST /devicelogin` (HTML form for people) | `sts.devicelogin` |
| `GET /common/userrealm/{username}?api-version=1.0` | `sts.userrealm` |

`{tenant}` is the tenant GUID or a verified domain (`sts.tenants`). Errors are Entra-shaped
JSON, or an HTML page on browser routes (`sts.errors`). Cloud-only admins are verified by
the STS itself (`sts.admins`, argon2id); synced users' passwords go to the tenant's agents
through one `PasswordValidator` (`sts.signin`, `sts.passwords`): smart lockout, dispatch
over RabbitMQ, the sign-in log.

Modules: `app` (create_app, lifetimes), `main` (the console script), `settings`,
`correlation` (request ids, log context), `errors`, `forms` (strict form parsing),
`tenants`, `clients`, `admins`, `issuance` (scopes, claims), `signing` (ES256 keys, JWKS),
`discovery`, `token`, `devicecode`, `devicelogin`, `pages` (HTML), `queries` (all SQL),
`authorize` (browser sign-in), `codes` (authorization codes, refresh tokens), `pkce`,
`signin` (the validator seam), `passwords` (its implementation), `dispatcher` (AMQP RPC
to agents), `agent_keys` (per-tenant agent keys, LISTEN/NOTIFY), `lockout` (smart
lockout), `signin_log` (batched sign-in log), `userrealm` (home-realm discovery).
"""
