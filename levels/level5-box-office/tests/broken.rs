//! The broken versions, each one flag, each reproduced on demand with a
//! wide `--think-time-ms`, each beside the correct version under the same
//! think time. The lesson (docs/06-box-office.md) shows the same runs.

mod common;

use std::time::Duration;

use common::Office;
use serde_json::json;

/// `--lock-order request`: buyers holding [1, 2] and [2, 1] each lock their
/// first seat, then wait for the other's. PostgreSQL detects the deadlock
/// (40P01) and rolls one back: that buyer sees 503 `busy` (click again),
/// never a 500. In the global order the second buyer just waits, then
/// learns the seats are taken (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seats_locked_in_request_order_deadlock_and_one_buyer_is_told_busy() -> anyhow::Result<()> {
    for (order, loser) in [
        ("request", (503, "busy")),
        ("global", (409, "seats_unavailable")),
    ] {
        let office = Office::start(2, &["--lock-order", order, "--think-time-ms", "500"]).await?;
        let show = office.create_show(&[("vip", 100, 4)]).await?;
        let (a, b) = tokio::join!(
            office.hold(0, show, 1, &[1, 2]),
            office.hold(1, show, 2, &[2, 1])
        );
        let (a, b) = (a?, b?);
        let mut answers = [
            (a.status, a.code().to_owned()),
            (b.status, b.code().to_owned()),
        ];
        answers.sort();
        assert_eq!(
            answers,
            [(201, String::new()), (loser.0, loser.1.to_owned())],
            "--lock-order {order}: {a:?} {b:?}"
        );
        if order == "request" {
            let busy = if a.status == 503 { &a } else { &b };
            assert!(
                busy.body["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("deadlock"),
                "{busy:?}"
            );
        }
        assert_eq!(
            office.live_holds(show).await?.len(),
            1,
            "one buyer holds the seats"
        );
        assert_eq!(office.double_sold(show).await?, Vec::<i32>::new());
        office.stop().await?;
    }
    Ok(())
}

/// `--lock-scope before-commit`: the seat locks end before the hold is
/// written, so a second buyer reads the seats as free and takes them too:
/// both answered 201, both holding seats 5 and 6, in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seat_lock_released_before_the_commit_sells_the_seats_twice() -> anyhow::Result<()> {
    for (scope, winners, double) in [("before-commit", 2, vec![5, 6]), ("commit", 1, vec![])] {
        let office = Office::start(2, &["--lock-scope", scope, "--think-time-ms", "300"]).await?;
        let show = office.create_show(&[("vip", 100, 8)]).await?;
        let (a, b) = tokio::join!(
            office.hold(0, show, 1, &[5, 6]),
            office.hold(1, show, 2, &[6, 5])
        );
        let statuses = [a?.status, b?.status];
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            winners,
            "{scope}: {statuses:?}"
        );
        assert_eq!(
            office.double_sold(show).await?,
            double,
            "--lock-scope {scope}"
        );
        let holders: Vec<i64> = office
            .live_holds(show)
            .await?
            .values()
            .map(|(u, _)| *u)
            .collect();
        assert_eq!(holders.len(), winners, "{scope}: holders {holders:?}");
        office.stop().await?;
    }
    Ok(())
}

/// `--payment-check outside`: a user with 150 pays two holds of 100 at
/// once. Both read 150 outside the transaction, both pass, and both write
/// 50: 200 paid from 150 charged. Checked inside, one is 402 and the
/// money adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_checked_outside_the_transaction_spends_the_balance_twice() -> anyhow::Result<()>
{
    for (check, broken) in [("outside", true), ("in-transaction", false)] {
        let office =
            Office::start(2, &["--payment-check", check, "--think-time-ms", "300"]).await?;
        let show = office.create_show(&[("vip", 100, 4)]).await?;
        office.charge(0, 1, 150, None).await?;
        let first = office.hold(0, show, 1, &[1]).await?.body["hold_id"]
            .as_i64()
            .unwrap();
        let second = office.hold(1, show, 1, &[2]).await?.body["hold_id"]
            .as_i64()
            .unwrap();
        let (a, b) = tokio::join!(office.pay(0, first, 1), office.pay(1, second, 1));
        let mut statuses = [a?.status, b?.status];
        statuses.sort_unstable();
        let paid: i64 = sqlx::query_scalar("SELECT coalesce(sum(amount), 0)::bigint FROM payments")
            .fetch_one(&office.pool)
            .await?;
        if broken {
            assert_eq!(statuses, [201, 201], "both payments passed the check");
            assert_eq!(paid, 200, "200 paid out of 150 charged");
            assert_eq!(office.money_not_conserved().await?, vec![1]);
        } else {
            assert_eq!(statuses, [201, 402]);
            assert_eq!(paid, 100);
            assert!(office.money_not_conserved().await?.is_empty());
        }
        office.stop().await?;
    }
    Ok(())
}

/// `--sweeper unlocked`: a payment locks its hold in time and takes two
/// seconds to commit; meanwhile the hold's time runs out and the sweeper
/// reads it as `held`, thinks, and marks it expired after the payment
/// committed. The user paid for seats that are back on sale. The locked
/// sweeper skips the hold the payment holds, and it stays paid.
#[tokio::test]
async fn an_unlocked_sweeper_expires_a_hold_whose_payment_is_committing() -> anyhow::Result<()> {
    for (mode, ends) in [("unlocked", "expired"), ("locked", "paid")] {
        let office = Office::start(
            1,
            &[
                "--sweeper",
                mode,
                "--think-time-ms",
                "2000",
                "--hold-ttl-ms",
                "1000",
                "--sweep-interval-ms",
                "20",
            ],
        )
        .await?;
        let show = office.create_show(&[("vip", 100, 4)]).await?;
        office.charge(0, 1, 100, None).await?;
        let hold = office.hold(0, show, 1, &[1]).await?.body["hold_id"]
            .as_i64()
            .unwrap();
        let paid = office.pay(0, hold, 1).await?;
        assert_eq!(
            paid.status, 201,
            "{mode}: the payment locked the hold in time: {paid:?}"
        );
        // A sentinel hold that expires after the payment committed: once the
        // (single) sweeper has expired it, every sweep that could have seen
        // the paid hold has finished.
        let sentinel = office.hold(0, show, 2, &[2]).await?.body["hold_id"]
            .as_i64()
            .unwrap();
        office
            .wait_for_status(sentinel, "expired", Duration::from_secs(30))
            .await?;

        assert_eq!(office.status_of(hold).await?, ends, "--sweeper {mode}");
        let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE hold_id = $1")
            .bind(hold)
            .fetch_one(&office.pool)
            .await?;
        assert_eq!(payments, 1, "the money was taken either way");
        let map = office
            .send(
                0,
                reqwest::Method::GET,
                &format!("/shows/{show}/seats"),
                None,
                &[],
            )
            .await?;
        let seat = if mode == "unlocked" {
            "available"
        } else {
            "sold"
        };
        assert_eq!(
            map.body["seats"][0]["status"],
            json!(seat),
            "--sweeper {mode}"
        );
        office.stop().await?;
    }
    Ok(())
}
