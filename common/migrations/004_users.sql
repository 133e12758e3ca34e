-- Users synced from the on-premises directory by `pta-agent sync` (docs/design.md §3.3: the
-- cloud knows who may sign in, never their password). Written by the CA's mutual-TLS
-- sync endpoint, read by the STS. A sign-in for a username not here answers AADSTS50034
-- without contacting any agent.

CREATE TABLE users (
    id            uuid PRIMARY KEY,                       -- the cloud object id (oid)
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    username      text NOT NULL CHECK (username = lower(username)),  -- sign-in name
    immutable_id  text NOT NULL,                          -- entryUUID / objectGUID
    display_name  text NOT NULL DEFAULT '',
    synced_by     uuid,                                   -- the agent that last synced it
    synced_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, username),
    UNIQUE (tenant_id, immutable_id)
);
