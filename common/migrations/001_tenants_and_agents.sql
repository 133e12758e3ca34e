-- Tenants, their verified domains, cloud-only admins, app registrations, and the agents
-- registered to them (docs/design.md §3.1, §3.2 and §3.4). Every tenant-owned row carries
-- tenant_id so that every query can be scoped by tenant (security rule: isolation).

CREATE TABLE tenants (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    block_legacy_auth boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE domains (
    name        text PRIMARY KEY CHECK (name = lower(name)),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    is_verified boolean NOT NULL DEFAULT false
);
CREATE INDEX domains_tenant ON domains (tenant_id);

-- Cloud-only accounts (the PTA admins). password_hash is an argon2id PHC string.
CREATE TABLE admins (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    username      text NOT NULL CHECK (username = lower(username)),
    display_name  text NOT NULL DEFAULT '',
    password_hash text NOT NULL,
    roles         text[] NOT NULL DEFAULT '{}',
    UNIQUE (tenant_id, username)
);

CREATE TABLE apps (
    client_id     uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL,
    redirect_uris text[] NOT NULL DEFAULT '{}',
    is_public     boolean NOT NULL DEFAULT true
);
CREATE INDEX apps_tenant ON apps (tenant_id);

CREATE TABLE agents (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    host              text NOT NULL,
    version           text NOT NULL,
    spki              bytea NOT NULL,          -- DER SubjectPublicKeyInfo
    kid               text NOT NULL UNIQUE,    -- b64url SHA-256 of spki
    cert_serial       text NOT NULL,           -- hex, the one current certificate
    cert_not_after    timestamptz NOT NULL,
    broker_user       text,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz,
    status_detail     text NOT NULL DEFAULT ''
);
CREATE INDEX agents_tenant ON agents (tenant_id);

-- Revoked certificates of either CA, for the CRLs. Rows outlive the agent row.
CREATE TABLE revocations (
    serial     text NOT NULL,
    issuer     text NOT NULL CHECK (issuer IN ('pta', 'service')),
    tenant_id  uuid,
    agent_id   uuid,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    reason     text NOT NULL DEFAULT '',
    PRIMARY KEY (issuer, serial)
);

-- The device authorization grant (RFC 8628) is stored, not kept in memory, so that any
-- STS replica can answer the poll. Codes are stored hashed.
CREATE TABLE device_codes (
    device_code_hash text PRIMARY KEY,
    user_code        text NOT NULL UNIQUE,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client_id        text NOT NULL,
    scope            text NOT NULL DEFAULT '',
    expires_at       timestamptz NOT NULL,
    approved_admin   uuid REFERENCES admins (id) ON DELETE CASCADE,
    is_denied        boolean NOT NULL DEFAULT false,
    last_polled_at   timestamptz
);
