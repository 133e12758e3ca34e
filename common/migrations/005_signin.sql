-- The STS's sign-in path (docs/design.md §3.3): change notifications for the agent key
-- cache, smart lockout state shared by every replica, and the sign-in log.

-- sts.agent_keys caches each tenant's active agents (id, kid, public key) per process and
-- drops a tenant when this fires. Only what the cache holds counts: a heartbeat (which
-- updates last_heartbeat_at every few minutes) does not notify. The payload is the
-- tenant id; an empty payload (TRUNCATE) means "every tenant". pg_notify folds identical
-- payloads of one transaction into one notification.
CREATE FUNCTION pta_notify_agents() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('pta_agents', '');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('pta_agents', OLD.tenant_id::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('pta_agents', NEW.tenant_id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER agents_notify_insert_delete
    AFTER INSERT OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION pta_notify_agents();

CREATE TRIGGER agents_notify_update
    AFTER UPDATE ON agents
    FOR EACH ROW
    WHEN (OLD.id IS DISTINCT FROM NEW.id
          OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id
          OR OLD.kid IS DISTINCT FROM NEW.kid
          OR OLD.spki IS DISTINCT FROM NEW.spki
          OR OLD.cert_not_after IS DISTINCT FROM NEW.cert_not_after)
    EXECUTE FUNCTION pta_notify_agents();

CREATE TRIGGER agents_notify_truncate
    AFTER TRUNCATE ON agents
    FOR EACH STATEMENT EXECUTE FUNCTION pta_notify_agents();

-- Smart lockout (docs/design.md §7), one row per (tenant, sign-in name) that has
-- failed recently; counted here so that every STS replica sees the same count. A
-- success deletes the row. recent_failures holds keyed fingerprints (HMAC-SHA256 with a
-- per-deployment secret, never a plain hash) of the last wrong passwords, so a repeat of
-- the same wrong password is not counted twice (as in Entra); empty when no secret is
-- configured.
CREATE TABLE lockouts (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    username         text NOT NULL CHECK (username = lower(username)),
    failures         integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    lockouts         integer NOT NULL DEFAULT 0 CHECK (lockouts >= 0),
    locked_until     timestamptz,
    last_failure_at  timestamptz,
    recent_failures  bytea[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, username)
);

-- The sign-in log: one row per password validation, written in batches off the hot path
-- (sts.signin_log). No foreign keys: the log outlives users, agents and apps, and COPY
-- stays cheap. result is "success", the agent's status, or an STS-side outcome
-- (user_not_found, empty_password, smart_lockout, no_agent, timeout, forged_reply, ...);
-- code is the AADSTS code answered (0 on success). Never a password or key.
CREATE TABLE sign_ins (
    at             timestamptz NOT NULL,
    tenant_id      uuid NOT NULL,
    username       text NOT NULL,
    user_id        uuid,
    result         text NOT NULL,
    code           integer NOT NULL DEFAULT 0,
    detail         text NOT NULL DEFAULT '',
    agent_id       uuid,
    latency_ms     real NOT NULL,
    client_ip      text NOT NULL DEFAULT '',
    correlation_id text NOT NULL DEFAULT '',
    request_id     uuid,
    client_id      text NOT NULL DEFAULT '',
    flow           text NOT NULL
);
CREATE INDEX sign_ins_tenant_at ON sign_ins (tenant_id, at DESC);
CREATE INDEX sign_ins_user_at ON sign_ins (tenant_id, username, at DESC);
