//! Where a Level 4 sale lives in Redis: the key names, in one place.
//!
//! Every key starts with `ticket-rush:l4:{<namespace>}`, where the namespace is
//! drawn once per PostgreSQL database (migration `0003_level4_sales.sql`).
//! Servers, workers and tools that reach the same database therefore find
//! the same keys without being told, and two databases sharing one Redis
//! (every test of a test process does) never see each other's stock.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `…:sale:<ticket>` | hash `{epoch, total, stock}`, and `fence` while a reset closes it | the sale Redis decides from |
//! | `…:buyers:<ticket>` | hash `user id → order id` | who holds the ticket: the duplicate check, and the order id to answer again |
//! | `…:orders` | stream | one entry per sale, until the worker has persisted it |
//! | `…:dead-letters` | stream | entries PostgreSQL refused, with the reason |
//! | `…:order-id` | integer | the last order id handed out |
//! | `…:isolated` | hash `entry id → consumer` | entries persisted alone after their holders kept stopping |
//!
//! ## On a Redis Cluster
//!
//! A script or a MULTI/EXEC may only touch keys of one hash slot (Redis
//! refuses it with `CROSSSLOT` otherwise). The purchase script touches the
//! sale, its buyers, its idempotency keys, the *one* orders stream and the
//! *one* order id counter of the database: so the namespace is the hash tag
//! (`ticket-rush:l4:{<namespace>}:…`) and every key of a database lives in
//! one slot, on one master. Different databases (events, tests) spread over
//! the masters; one event's sales do not. Spreading one event over masters
//! would need a tag per ticket (`{ticket:7}`), hence a stream and an order
//! id counter per ticket, and a worker reading many streams: a different
//! design, not a key rename. The tests check every script's keys share a
//! slot (`every_script_call_keeps_its_keys_in_one_slot`); docs/08-cluster.md
//! tells the rest.

use sqlx::PgPool;

use anyhow::Context as _;
use ticket_core::TicketId;

/// The consumer group every persistence worker of a database joins.
pub const GROUP: &str = "persist";

/// The names of one database's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys under `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self {
            // The namespace is the hash tag: see the module documentation.
            prefix: format!("ticket-rush:l4:{{{namespace}}}"),
        }
    }

    /// Reads the database's namespace (created by the migrations).
    pub async fn of_database(pool: &PgPool) -> anyhow::Result<Self> {
        Self::read(pool)
            .await
            .context("cannot read Level 4's Redis namespace (were the migrations applied?)")
    }

    /// [`Keys::of_database`], keeping PostgreSQL's own error so that the
    /// caller can tell an outage from a missing table.
    pub async fn read(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let namespace: String = sqlx::query_scalar("SELECT namespace FROM level4_namespace")
            .fetch_one(pool)
            .await?;
        Ok(Self::new(&namespace))
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The sale hash of `ticket`: `epoch`, `total`, `stock`.
    pub fn sale(&self, ticket: TicketId) -> String {
        format!("{}:sale:{ticket}", self.prefix)
    }

    /// The buyers hash of `ticket`: user id → order id.
    pub fn buyers(&self, ticket: TicketId) -> String {
        format!("{}:buyers:{ticket}", self.prefix)
    }

    /// The idempotency keys of `ticket`'s sale: `<user id>:<key>` → order
    /// id, written by the purchase script with the sale it made under that
    /// key (scoped by buyer: two buyers' keys never collide).
    pub fn idempotency(&self, ticket: TicketId) -> String {
        format!("{}:idempotency:{ticket}", self.prefix)
    }

    /// The stream of sales waiting to be persisted.
    pub fn orders(&self) -> String {
        format!("{}:orders", self.prefix)
    }

    /// The stream of entries that could not be persisted.
    pub fn dead_letters(&self) -> String {
        format!("{}:dead-letters", self.prefix)
    }

    /// Entries a worker is persisting alone because their holders kept
    /// stopping (entry id → consumer); see `persist.rs`.
    pub fn isolated(&self) -> String {
        format!("{}:isolated", self.prefix)
    }

    /// The order id counter.
    pub fn order_id(&self) -> String {
        format!("{}:order-id", self.prefix)
    }

    /// The pattern matching every sale hash (for `SCAN`).
    pub fn sale_pattern(&self) -> String {
        format!("{}:sale:*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_database_shares_its_prefix() {
        let keys = Keys::new("abc");
        let ticket = TicketId::parse(7).unwrap();
        assert_eq!(keys.sale(ticket), "ticket-rush:l4:{abc}:sale:7");
        assert_eq!(keys.buyers(ticket), "ticket-rush:l4:{abc}:buyers:7");
        assert_eq!(keys.orders(), "ticket-rush:l4:{abc}:orders");
        assert!(keys.dead_letters().starts_with(keys.prefix()));
        assert!(keys.idempotency(ticket).starts_with(keys.prefix()));
        assert!(keys.order_id().starts_with(keys.prefix()));
    }

    /// Every key one script, transaction or pipeline call touches hashes to
    /// one slot, so a Redis Cluster runs it instead of refusing it with
    /// CROSSSLOT. Lists the keys of each call site (store.rs, load.rs,
    /// cancel.rs, reset.rs, reconcile, persist, drain) through the same
    /// builders they use.
    #[test]
    fn every_script_call_keeps_its_keys_in_one_slot() {
        use ticket_core::redis_conn::assert_one_slot;
        let keys = Keys::new("f3a1c2");
        for id in [1, 7, 1000, 123_456] {
            let t = TicketId::parse(id).unwrap();
            let (sale, buyers, idem) = (keys.sale(t), keys.buyers(t), keys.idempotency(t));
            let (orders, order_id) = (keys.orders(), keys.order_id());
            assert_one_slot("purchase.lua", &[&sale, &buyers, &orders, &order_id, &idem]);
            assert_one_slot("load.lua", &[&sale, &buyers, &order_id, &idem]);
            assert_one_slot("cancel.lua, repair.lua", &[&sale, &buyers, &order_id]);
            assert_one_slot(
                "reconcile's snapshot, drain, the worker",
                &[
                    &sale,
                    &buyers,
                    &orders,
                    &keys.dead_letters(),
                    &keys.isolated(),
                ],
            );
        }
        // Different tickets too: the stream and the counter are shared.
        let one = keys.sale(TicketId::parse(1).unwrap());
        let two = keys.sale(TicketId::parse(2).unwrap());
        assert_one_slot("two tickets of one database", &[&one, &two]);
    }
}
