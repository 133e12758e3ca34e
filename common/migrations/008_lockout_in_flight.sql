-- Smart lockout counts attempts in flight (sent to agents, no answer yet) as well as
-- failures, so parallel guesses cannot outrun the threshold (sts.lockout). in_flight is
-- trusted until in_flight_until: a replica that died mid-request cannot hold it forever.
ALTER TABLE lockouts
    ADD COLUMN in_flight       integer NOT NULL DEFAULT 0 CHECK (in_flight >= 0),
    ADD COLUMN in_flight_until timestamptz;
