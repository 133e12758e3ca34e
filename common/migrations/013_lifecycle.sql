-- Agent lifecycle (docs/architecture.md "Agent lifecycle"): clone detection and the
-- tenant's policy for suspected clones. Inactive agents need no column: the lifecycle
-- sweep (ca.lifecycle) reads last_heartbeat_at / last_bootstrap_at / registered_at.

-- The agent processes recently seen using this agent's identity: a JSON object
-- {instance_id: last seen (RFC 3339)}, at most a few entries, pruned to the clone window.
-- An instance that comes back after another one was seen is a clone (ca.lifecycle).
-- suspected_clone_at is set once and stays until the agent is deleted.
ALTER TABLE agents
    ADD COLUMN instances jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN suspected_clone_at timestamptz;

-- Default off: a suspected clone is shown and logged; on, it is also revoked (deleted).
ALTER TABLE tenants
    ADD COLUMN revoke_suspected_clones boolean NOT NULL DEFAULT false;
