-- Authorization codes and refresh tokens of the browser sign-in flow (sts.codes,
-- docs/design.md §3.3: "then an authorization code or tokens"). Stored, not kept in memory,
-- so that any STS replica redeems what another issued. Only the SHA-256 of a code or a
-- token is stored (256 random bits each: a plain hash is enough, and the table redeems
-- nothing if it leaks). The user is a snapshot of what the agent-validated sign-in
-- returned; no password or anything derived from one is ever stored.

-- Single use (RFC 6749 section 4.1.2): redeeming sets used_at atomically; a second
-- redemption sets replayed_at and revokes the refresh tokens issued from the code.
CREATE TABLE authorization_codes (
    code_hash      text PRIMARY KEY,                 -- hex SHA-256 of the code
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client_id      text NOT NULL,
    redirect_uri   text NOT NULL,                    -- must be sent again, equal, to redeem
    code_challenge text NOT NULL,                    -- PKCE S256 (RFC 7636)
    nonce          text,                             -- echoed in the ID token
    scope          text NOT NULL DEFAULT '',         -- canonical (sts.issuance.Scope)
    user_id        uuid NOT NULL,                    -- oid
    username       text NOT NULL,
    display_name   text NOT NULL DEFAULT '',
    immutable_id   text NOT NULL DEFAULT '',
    auth_time      timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    replayed_at    timestamptz
);
CREATE INDEX authorization_codes_expiry ON authorization_codes (tenant_id, expires_at);

-- One family per sign-in that asked for offline_access; each rotation adds a token to it.
-- expires_at is absolute: no rotation extends a family past it. Revoking a family (reuse
-- of a rotated token, replay of its code) invalidates every token in it.
CREATE TABLE refresh_token_families (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client_id      text NOT NULL,
    scope          text NOT NULL,
    user_id        uuid NOT NULL,
    username       text NOT NULL,
    display_name   text NOT NULL DEFAULT '',
    immutable_id   text NOT NULL DEFAULT '',
    auth_time      timestamptz NOT NULL,
    code_hash      text,                             -- the authorization code it came from
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX refresh_token_families_code ON refresh_token_families (code_hash);
CREATE INDEX refresh_token_families_expiry ON refresh_token_families (tenant_id, expires_at);
CREATE INDEX refresh_token_families_user ON refresh_token_families (tenant_id, user_id);

-- expires_at slides: each token lives refresh_token_lifetime_s from its issue, capped by
-- its family. used_at is set when it is rotated; presenting it again is reuse.
CREATE TABLE refresh_tokens (
    token_hash text PRIMARY KEY,                     -- hex SHA-256 of the token
    family_id  uuid NOT NULL REFERENCES refresh_token_families (id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
