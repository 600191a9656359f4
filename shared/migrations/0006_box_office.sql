-- Level 5, the box office: shows, seats, holds, wallets and payments.
-- The names are a contract (../shared/BOX_OFFICE.md): tests, the load tool
-- and outside checks read these tables to judge a run.
--
-- Where the truth of "who has this seat" lives, twice on purpose:
--
-- * `hold_seats` records every claim ever made: hold 7 asked for seat 3.
--   A seat is double-sold when two holds that are `held` or `paid` list it.
--   Checks join this table with `holds`; it is the record, not the lock.
-- * `seats.hold_id` is the seat's current owner (NULL: on sale). It is the
--   one row every strategy must change to take a seat, so it is what the
--   strategies lock (pessimistic), version (optimistic) or mirror (Redis).
--
-- No constraint forbids a seat in two live holds: the broken modes
-- (`--lock-order request`, `--lock-scope before-commit`) must be able to
-- double-sell, so that the checks can show it.

CREATE TABLE IF NOT EXISTS shows (
    id         BIGSERIAL   PRIMARY KEY,
    title      TEXT        NOT NULL,
    starts_at  TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- `version` grows on every change of `hold_id`: the optimistic strategy
-- writes `WHERE version = $read`, so a seat changed since it was read is
-- not written.
CREATE TABLE IF NOT EXISTS seats (
    show_id BIGINT NOT NULL REFERENCES shows (id) ON DELETE CASCADE,
    seat_no INT    NOT NULL CHECK (seat_no > 0),
    grade   TEXT   NOT NULL,
    price   BIGINT NOT NULL CHECK (price > 0),
    hold_id BIGINT,
    version BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (show_id, seat_no)
);

-- `amount` is the sum of the seats' prices when the hold was made; a price
-- changed later does not change what this hold costs.
CREATE TABLE IF NOT EXISTS holds (
    id         BIGSERIAL   PRIMARY KEY,
    show_id    BIGINT      NOT NULL REFERENCES shows (id) ON DELETE CASCADE,
    user_id    BIGINT      NOT NULL CHECK (user_id > 0),
    amount     BIGINT      NOT NULL CHECK (amount > 0),
    status     TEXT        NOT NULL CHECK (status IN ('held', 'paid', 'released', 'expired')),
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When the status last changed (paid, released, expired).
    settled_at TIMESTAMPTZ
);

-- The sweeper's question, "which held holds are past their time?", reads
-- only this small index.
CREATE INDEX IF NOT EXISTS holds_due ON holds (expires_at) WHERE status = 'held';
CREATE INDEX IF NOT EXISTS holds_by_user ON holds (user_id, show_id);

CREATE TABLE IF NOT EXISTS hold_seats (
    hold_id BIGINT NOT NULL REFERENCES holds (id) ON DELETE CASCADE,
    show_id BIGINT NOT NULL,
    seat_no INT    NOT NULL,
    PRIMARY KEY (hold_id, seat_no),
    FOREIGN KEY (show_id, seat_no) REFERENCES seats (show_id, seat_no) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS hold_seats_by_seat ON hold_seats (show_id, seat_no);

-- The CHECK is the last line of defence: a payment that would overdraw is
-- refused by the database even if the code forgot to look.
CREATE TABLE IF NOT EXISTS wallets (
    user_id BIGINT PRIMARY KEY CHECK (user_id > 0),
    balance BIGINT NOT NULL CHECK (balance >= 0)
);

-- Every charge, so that money can be audited:
-- sum(charges) = balance + sum(payments), per user, at every commit.
CREATE TABLE IF NOT EXISTS wallet_charges (
    id         BIGSERIAL   PRIMARY KEY,
    user_id    BIGINT      NOT NULL,
    amount     BIGINT      NOT NULL CHECK (amount > 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS wallet_charges_by_user ON wallet_charges (user_id);

-- UNIQUE (hold_id): a hold is paid at most once, whatever the code does.
CREATE TABLE IF NOT EXISTS payments (
    id         BIGSERIAL   PRIMARY KEY,
    hold_id    BIGINT      NOT NULL UNIQUE REFERENCES holds (id) ON DELETE CASCADE,
    user_id    BIGINT      NOT NULL,
    amount     BIGINT      NOT NULL CHECK (amount > 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payments_by_user ON payments (user_id);
