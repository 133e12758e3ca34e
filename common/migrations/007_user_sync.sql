-- User sync runs (ca/sync.py, docs/design.md §3.3): an agent sends its directory's users in
-- batches of one run (sync_id); the last batch ends the run and the CA deletes the
-- tenant's users that the run did not send. users.last_sync_id marks the rows a run
-- wrote; user_syncs records when each run started (database clock), so that a run only
-- deletes rows last written before it began (never those of another agent's concurrent
-- run), and which agent owns it (a batch with someone else's sync_id is refused).

ALTER TABLE users ADD COLUMN last_sync_id uuid;

CREATE TABLE user_syncs (
    sync_id     uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_id    uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    upserted    integer NOT NULL DEFAULT 0,   -- rows written by the run's batches
    deleted     integer NOT NULL DEFAULT 0    -- rows its final batch deleted
);
CREATE INDEX user_syncs_tenant ON user_syncs (tenant_id, started_at);
