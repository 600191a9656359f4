//! Idempotency keys on Level 4, where the sale is decided in Redis: a key
//! answers one order, ever.

mod common;

use common::{ticket, two_stores, user};
use level4::store::Decision;
use ticket_core::OrderId;

/// A buyer's purchase with a key sells order X, but its answer never reaches
/// PostgreSQL (the server died, or its Redis reply timed out and the buyer
/// was told 503). The buyer cancels X, then retries the request with the
/// same key: it is answered X again and buys nothing, since the key already
/// bought once. Another key of the same buyer is a new purchase; the same
/// key from another buyer is another request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_order_was_cancelled_never_buys_a_second_order() {
    let (a, b) = two_stores(10).await;
    a.ensure_loaded(ticket()).await.unwrap();
    let Decision::Sold(first) = a.decide_keyed(ticket(), user(1), Some("k")).await.unwrap() else {
        panic!("the first try sells");
    };
    a.cancel(ticket(), OrderId(first), user(1)).await.unwrap();

    let retry = b.decide_keyed(ticket(), user(1), Some("k")).await.unwrap();

    assert_eq!(
        retry,
        Decision::Resold(first),
        "the key already bought once"
    );
    let sale = a.status(ticket()).await.unwrap().redis.unwrap();
    assert_eq!((sale.stock, sale.buyers), (10, 0), "nothing spent again");
    assert!(matches!(
        b.decide_keyed(ticket(), user(1), Some("another")).await.unwrap(),
        Decision::Sold(id) if id != first
    ));
    assert!(matches!(
        b.decide_keyed(ticket(), user(2), Some("k")).await.unwrap(),
        Decision::Sold(id) if id != first
    ));
}
