-- Level 4's bookkeeping: sales decided in Redis, persisted afterwards.
--
-- Level 4 decides every sale in Redis (one Lua script) and writes the order
-- to PostgreSQL later, through a Redis stream. Redis is loaded from this
-- database once per sale; these objects are what makes "once per sale"
-- well defined, and what lets orders arrive late without landing in the
-- wrong sale. Other levels never read them.

-- Which sale of the ticket Redis is serving: 0 means never loaded. A new
-- value comes from level4_sale_epoch each time a ticket that was (re)put on
-- sale is loaded into Redis. Every queued order carries the epoch it was sold
-- in, and the persistence worker only inserts orders of the ticket's current
-- epoch: an order from a sale that has since been reset is dead-lettered, not
-- counted against the new sale.
--
-- A reset (ticket_core::db::reset_ticket) sets version = 0. Level 4 bumps
-- version on every write (the load and each persisted batch), so
-- `version = 0` reads "put on sale, not loaded into Redis since": the rule
-- that starts a new epoch.
ALTER TABLE tickets ADD COLUMN IF NOT EXISTS sale_epoch BIGINT NOT NULL DEFAULT 0;

CREATE SEQUENCE IF NOT EXISTS level4_sale_epoch;

-- When Redis decided the sale. `created_at` stays "when the row landed", so
-- for Level 4 `created_at - sold_at` is each order's persistence lag. NULL
-- for the other levels, which decide and write in the same transaction.
ALTER TABLE ticket_orders ADD COLUMN IF NOT EXISTS sold_at TIMESTAMPTZ;

-- The prefix of this database's keys in Redis, drawn once per database. Two
-- databases sharing one Redis (tests do: a fresh database per test, one
-- Redis per test process) then never see each other's stock, and every
-- server and tool that reaches this database finds the same keys without
-- being told.
CREATE TABLE IF NOT EXISTS level4_namespace (
    only_row  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    namespace TEXT    NOT NULL
);
INSERT INTO level4_namespace (namespace)
VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 16))
ON CONFLICT (only_row) DO NOTHING;

-- A ticket put on sale (created, or reset to version 0) is announced on the
-- channel `level4_sale_reset` with its id as the payload. Level 4 servers
-- LISTEN and reload a ticket whose previous sale Redis still holds: without
-- it, Redis would keep answering from the old sale (sold out) until someone
-- noticed. The notification is sent at COMMIT; other levels never set
-- version to 0 after the first insert, so for them the trigger's WHEN is one
-- comparison per row written.
CREATE OR REPLACE FUNCTION level4_announce_sale() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('level4_sale_reset', NEW.id::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS level4_announce_sale ON tickets;
CREATE TRIGGER level4_announce_sale
    AFTER INSERT OR UPDATE OF version ON tickets
    FOR EACH ROW
    WHEN (NEW.version = 0)
    EXECUTE FUNCTION level4_announce_sale();
