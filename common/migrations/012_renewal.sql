-- Certificate renewal (docs/architecture.md "Certificate renewal"): the tenant leases
-- that serialise renewals, and the record of each renewal.

-- One holder at a time per (tenant, purpose). A lease is taken by an upsert that only
-- succeeds when no row exists or the row's lease has expired, so a holder that dies
-- frees the lease at expires_at without anyone cleaning up. purpose is 'renewal' today;
-- the updater's rollouts will take 'rollout' leases the same way (ca.leases).
CREATE TABLE leases (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    purpose     text NOT NULL CHECK (purpose ~ '^[a-z_]{1,32}$'),
    holder      text NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, purpose)
);

-- One row per renewal. The new certificate is kept so that an agent that crashed before
-- storing it gets the same answer when it asks again with the same key (ca.renewal);
-- completed_at is set when the agent first bootstraps with the new certificate, which
-- also releases the tenant's renewal lease. old_kid/new_kid make a key usable once: a
-- CSR for any key this agent (or another) ever had is refused (renewal_replayed).
-- No foreign key: like revocations, the history outlives the agent row.
CREATE TABLE agent_renewals (
    new_serial      text PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    agent_id        uuid NOT NULL,
    old_serial      text NOT NULL,
    old_kid         text NOT NULL,
    new_kid         text NOT NULL UNIQUE,
    new_certificate text NOT NULL,
    renewed_at      timestamptz NOT NULL,
    completed_at    timestamptz
);
CREATE INDEX agent_renewals_agent ON agent_renewals (agent_id, renewed_at);
CREATE INDEX agent_renewals_old_kid ON agent_renewals (old_kid);
