//! Wallets and payments on two servers: no charge is lost, no payment is
//! made twice, and for every user the charges equal the balance plus the
//! payments, checked in the database.

mod common;

use common::Office;
use futures::future::join_all;

/// A hundred concurrent charges of one user, spread over two servers: the
/// balance is their sum and every charge has its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_charges_of_one_user_on_two_servers_add_up() -> anyhow::Result<()> {
    let office = Office::start(2, &[]).await?;
    let answers = join_all((1..=100i64).map(|i| office.charge(i as usize, 7, i * 10, None))).await;
    for answer in answers {
        let answer = answer?;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let expected: i64 = (1..=100i64).map(|i| i * 10).sum();
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM wallets WHERE user_id = 7")
        .fetch_one(&office.pool)
        .await?;
    assert_eq!(balance, expected, "no charge was lost");
    let charges: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet_charges WHERE user_id = 7")
        .fetch_one(&office.pool)
        .await?;
    assert_eq!(charges, 100);
    let read = office
        .send(1, reqwest::Method::GET, "/wallets/7", None, &[])
        .await?;
    assert_eq!(read.body["balance"], expected);
    let never = office
        .send(0, reqwest::Method::GET, "/wallets/8", None, &[])
        .await?;
    assert_eq!(
        (never.status, never.body["balance"].as_i64()),
        (200, Some(0))
    );
    office.stop().await
}

/// The same charge sent five times at once with one `Idempotency-Key`,
/// on two servers, is applied once; all five get the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_repeated_with_its_idempotency_key_is_applied_once() -> anyhow::Result<()> {
    let office = Office::start(2, &[]).await?;
    let answers = join_all((0..5).map(|i| office.charge(i, 9, 500, Some("charge-9-a")))).await;
    for answer in answers {
        let answer = answer?;
        assert_eq!(
            (answer.status, answer.body["balance"].as_i64()),
            (200, Some(500)),
            "{answer:?}"
        );
    }
    let charges: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet_charges WHERE user_id = 9")
        .fetch_one(&office.pool)
        .await?;
    assert_eq!(charges, 1, "charged once");
    let other_amount = office.charge(0, 9, 600, Some("charge-9-a")).await?;
    assert_eq!(
        (other_amount.status, other_amount.code()),
        (422, "idempotency_key_mismatch")
    );
    office.stop().await
}

/// Two payments of one hold at once, on two servers: one 201, one 409
/// `already_paid`, and the money moves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_paid_twice_at_once_is_charged_once_and_the_second_is_409() -> anyhow::Result<()> {
    let office = Office::start(2, &[]).await?;
    let show = office.create_show(&[("vip", 1_000, 4)]).await?;
    assert_eq!(office.charge(0, 1, 5_000, None).await?.status, 200);
    let hold = office.hold(0, show, 1, &[1, 2]).await?;
    let hold = hold.body["hold_id"].as_i64().unwrap();
    let (a, b) = tokio::join!(office.pay(0, hold, 1), office.pay(1, hold, 1));
    let mut statuses = vec![(a?.status), (b?.status)];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409]);
    assert_eq!(office.status_of(hold).await?, "paid");
    let wallet = office
        .send(0, reqwest::Method::GET, "/wallets/1", None, &[])
        .await?;
    assert_eq!(wallet.body["balance"], 3_000);
    let later = office.pay(1, hold, 1).await?;
    assert_eq!((later.status, later.code()), (409, "already_paid"));
    let map = office
        .send(
            0,
            reqwest::Method::GET,
            &format!("/shows/{show}/seats"),
            None,
            &[],
        )
        .await?;
    assert_eq!(map.body["seats"][0]["status"], "sold");
    assert!(office.money_not_conserved().await?.is_empty());
    office.stop().await
}

/// Paying without enough money is 402 and changes nothing; another user
/// may not pay someone's hold (403).
#[tokio::test]
async fn a_payment_without_enough_balance_is_402_and_changes_nothing() -> anyhow::Result<()> {
    let office = Office::start(1, &[]).await?;
    let show = office.create_show(&[("vip", 1_000, 4)]).await?;
    assert_eq!(office.charge(0, 1, 999, None).await?.status, 200);
    let hold = office.hold(0, show, 1, &[1]).await?.body["hold_id"]
        .as_i64()
        .unwrap();
    let before = office.fingerprint().await?;
    let poor = office.pay(0, hold, 1).await?;
    assert_eq!((poor.status, poor.code()), (402, "insufficient_balance"));
    let thief = office.pay(0, hold, 2).await?;
    assert_eq!((thief.status, thief.code()), (403, "forbidden"));
    assert_eq!(office.fingerprint().await?, before);
    assert_eq!(office.status_of(hold).await?, "held");
    office.stop().await
}

/// 60 users on two servers each charge, hold a seat and pay, all at once,
/// some twice over: money adds up for every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn money_is_conserved_after_concurrent_charges_and_payments() -> anyhow::Result<()> {
    let office = Office::start(2, &[]).await?;
    let show = office
        .create_show(&[("vip", 700, 60), ("r", 300, 60)])
        .await?;
    let buyers = join_all((1..=60i64).map(|user| {
        let office = &office;
        async move {
            let server = user as usize;
            office
                .charge(server, user, 400 + 50 * (user % 13), None)
                .await?;
            let seats = [user as i32, 60 + user as i32];
            let hold = office.hold(server + 1, show, user, &seats).await?;
            anyhow::ensure!(hold.status == 201, "{hold:?}");
            let hold = hold.body["hold_id"].as_i64().unwrap();
            office.charge(server + 1, user, 600, None).await?;
            let (a, b) = tokio::join!(
                office.pay(server, hold, user),
                office.pay(server + 1, hold, user)
            );
            anyhow::Ok((a?.status, b?.status))
        }
    }))
    .await;
    for statuses in buyers {
        let (a, b) = statuses?;
        let mut pair = [a, b];
        pair.sort_unstable();
        assert!(pair == [201, 409] || pair == [402, 402], "{pair:?}");
    }
    assert_eq!(office.money_not_conserved().await?, Vec::<i64>::new());
    let unpaid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM holds h LEFT JOIN payments p ON p.hold_id = h.id \
         WHERE (h.status = 'paid') <> (p.id IS NOT NULL) OR (p.id IS NOT NULL AND p.amount <> h.amount)",
    )
    .fetch_one(&office.pool)
    .await?;
    assert_eq!(
        unpaid, 0,
        "every paid hold has exactly one payment of its amount"
    );
    office.stop().await
}
