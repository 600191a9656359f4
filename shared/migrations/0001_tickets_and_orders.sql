-- The domain every level shares.
--
-- `stock` is what is left to sell. The CHECK is only a safety net: the races
-- that Level 0 and Level 1 reproduce are *lost updates* (two buyers both read
-- stock = 65 and both write 64), which never drive stock below zero. They show
-- up as more orders than tickets, not as a negative stock.
--
-- `version` is bumped by every write; Level 2's optimistic strategy writes
-- `WHERE version = $read_version` and retries when someone got there first.
CREATE TABLE IF NOT EXISTS tickets (
    id      BIGINT PRIMARY KEY,
    name    TEXT   NOT NULL,
    total   INT    NOT NULL CHECK (total >= 0),
    stock   INT    NOT NULL CHECK (stock >= 0),
    version BIGINT NOT NULL DEFAULT 0
);

-- One order per (ticket, buyer). The UNIQUE constraint is what turns a
-- double-click or a second purchase into `already_purchased` at every level,
-- including Level 0: even with no other control, the database refuses the
-- second row, and the API answers 409 instead of 500.
CREATE TABLE IF NOT EXISTS ticket_orders (
    id         BIGSERIAL   PRIMARY KEY,
    ticket_id  BIGINT      NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    user_id    BIGINT      NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (ticket_id, user_id)
);

-- A ticket to race for out of the box, so that a freshly started server can
-- be tried with curl at once. The load tool resets it (or another id) before
-- every run.
INSERT INTO tickets (id, name, total, stock)
VALUES (1, 'Rush concert', 100, 100)
ON CONFLICT (id) DO NOTHING;
