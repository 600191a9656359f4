-- Idempotency keys: a double-click or a client retry carries the same
-- `Idempotency-Key` header, and must get the first request's answer instead
-- of a second purchase.
--
-- A row is *claimed* (status NULL, owner = a random token, locked_until = a
-- lease) by the one request that does the work; every other request with the
-- key waits for it and replays `status` and `body`, byte for byte.
--
-- For a successful purchase the row is completed *in the same transaction*
-- that inserts the order (ticket_core::db::insert_order does both, with
-- `WHERE owner = $token`), so the order and the record of its key commit
-- together or not at all. A claim whose lease ran out therefore never has an
-- order behind it, and may safely be taken over and done again.
--
-- `body` is TEXT, not JSONB: JSONB would re-order and re-space the JSON, and a
-- replay must be identical to the first answer.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key          TEXT        PRIMARY KEY,
    ticket_id    BIGINT      NOT NULL,
    user_id      BIGINT      NOT NULL,
    owner        BIGINT      NOT NULL,
    locked_until TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    status       SMALLINT,
    body         TEXT,
    location     TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ
);

-- Cancelled orders move here, keeping their id, in the transaction that puts
-- their unit back in stock. A second cancel finds the order here and gets the
-- same answer without restocking again; the buyer may buy again, because the
-- live table's UNIQUE (ticket_id, user_id) no longer sees the old order.
CREATE TABLE IF NOT EXISTS cancelled_orders (
    id           BIGINT      PRIMARY KEY,
    ticket_id    BIGINT      NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    user_id      BIGINT      NOT NULL,
    ordered_at   TIMESTAMPTZ NOT NULL,
    cancelled_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
