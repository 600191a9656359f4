-- Level 6's own tables. Run by every level6 server at start-up, under an
-- advisory lock so that two servers starting at once do not race on
-- CREATE TABLE; every statement is idempotent. Other levels never read them.

-- One row per partition: the fencing token of the decider that owns it.
-- A decider writes `fence = its token` when it takes the partition, and
-- every batch it commits first locks this row and checks that the fence is
-- still its own token. A decider that stalled past its lease finds a newer
-- token here and its batch is rolled back: the zombie is fenced off.
CREATE TABLE IF NOT EXISTS level6_partitions (
    partition INT    PRIMARY KEY,
    fence     BIGINT NOT NULL DEFAULT 0
);

-- Every request a decider answered, by request id: the exactly-once record.
-- A request redelivered by the stream (a decider died after COMMIT and
-- before XACK) finds its row and is answered again, not decided again.
-- `GET /requests/{id}` reads it too. Written in the batch's transaction,
-- with the orders themselves.
CREATE TABLE IF NOT EXISTS level6_requests (
    request_id TEXT        PRIMARY KEY,
    ticket_id  BIGINT      NOT NULL,
    user_id    BIGINT      NOT NULL,
    idem_key   TEXT,
    status     SMALLINT    NOT NULL,
    body       TEXT        NOT NULL,
    location   TEXT,
    decided_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS level6_requests_by_key ON level6_requests (user_id, idem_key)
    WHERE idem_key IS NOT NULL;

-- How many partitions this database's servers split tickets over. The
-- first server decides; a server started with another --partitions refuses
-- to start, because two partition counts would give one ticket two deciders.
CREATE TABLE IF NOT EXISTS level6_settings (
    only_row   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    partitions INT     NOT NULL
);
