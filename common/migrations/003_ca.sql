-- What the CA records about an agent beyond 001 (docs/design.md §3.4, docs/architecture.md):
-- the status the agent last reported in its heartbeat (status_detail keeps its free text),
-- and when it last bootstrapped (fetched broker credentials), so admins can tell an agent
-- that starts but never reports from one that never starts.
ALTER TABLE agents
    ADD COLUMN reported_status   text NOT NULL DEFAULT '',
    ADD COLUMN last_bootstrap_at timestamptz;
