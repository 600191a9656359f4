//! What the Level 4 crate's tests share: two stores on a fresh database.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of the helpers"
)]

use std::time::Duration;

use level4::store::{RedisConn, SaleStore, RESPONSE_TIMEOUT};
use ticket_core::services::{Postgres, Redis};
use ticket_core::{db, TicketId, UserId};

/// Two stores (two servers) on a fresh database and the shared Redis, with
/// ticket 1 put on sale with `stock` units.
pub async fn two_stores(stock: i32) -> (SaleStore, SaleStore) {
    let database = Postgres::shared()
        .expect("PostgreSQL for tests")
        .fresh_database()
        .await
        .expect("a fresh database");
    let redis = Redis::shared().expect("Redis for tests").url().to_owned();
    let mut stores = Vec::new();
    for _ in 0..2 {
        let pool = db::connect(&database, 10, Duration::from_secs(10))
            .await
            .unwrap();
        db::migrate(&pool).await.unwrap();
        let conn = RedisConn::new(&redis, RESPONSE_TIMEOUT).unwrap();
        stores.push(SaleStore::open(pool, conn).await.unwrap());
    }
    db::reset_ticket(stores[0].pool(), ticket(), "Test", stock)
        .await
        .unwrap();
    let b = stores.pop().unwrap();
    (stores.pop().unwrap(), b)
}

/// The ticket every test sells.
pub fn ticket() -> TicketId {
    TicketId::parse(1).unwrap()
}

/// A buyer.
pub fn user(id: i64) -> UserId {
    UserId::parse(i128::from(id)).unwrap()
}

/// Buys as the server's strategy does: decide, and when Redis serves no
/// sale (not loaded yet, or closed by a reset), load it and decide again.
pub async fn buy(store: &SaleStore, buyer: i64) -> level4::store::Decision {
    use level4::store::Decision;
    for _ in 0..100 {
        match store.decide(ticket(), user(buyer)).await.unwrap() {
            Decision::NotLoaded => {
                store.ensure_loaded(ticket()).await.unwrap();
            }
            decided => return decided,
        }
    }
    panic!("buyer {buyer}: the sale never loaded");
}
