//! Judging a rush from the database.
//!
//! HTTP answers can lie (a server may answer 201 and lose the write, write
//! the row for someone else, or sell a unit twice); the rows in PostgreSQL
//! cannot. A run is judged by comparing what should have happened with
//! [`DbTruth`] and with *who* holds the rows: the set of users answered 201
//! must be the set of users holding orders. Equal counts are not enough.
//!
//! The rules, each a line of [`judge_run`]:
//!
//! 1. rows beyond the tickets on sale, or 201 answers beyond them
//!    (`oversold_answers`), are `oversold`;
//! 2. duplicate rows, stock that disagrees with the rows, a `total` other
//!    than the run put on sale, a 201 whose buyer holds no row, or a row
//!    whose buyer was never answered 201 (nor lost their answer to an
//!    error) are `inconsistent`;
//! 3. any 5xx answer other than 503, transport error or unexpected status
//!    is `errors`: a run with failures is never `correct`;
//! 4. fewer rows than tickets with buyers waiting for them, or a sustained
//!    run that sold nothing, is `undersold`;
//! 5. otherwise `correct`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::db::DbTruth;

/// The overall judgement of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Exactly the right number sold, stock agrees, no duplicates, and the
    /// servers' 201s match the rows.
    Correct,
    /// More orders than tickets: the race won.
    Oversold,
    /// Fewer orders than there were tickets and buyers for them.
    Undersold,
    /// No oversell, but the numbers disagree with each other: stock does not
    /// match the orders (a lost update), duplicate rows, a total other than
    /// the run put on sale, or 201s that do not match the rows' owners.
    Inconsistent,
    /// The rows agree, but buyers got failures: 5xx answers other than 503
    /// `busy`, transport errors (refused, timed out) or unexpected answers.
    Errors,
}

impl Verdict {
    /// The snake_case name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Correct => "correct",
            Self::Oversold => "oversold",
            Self::Undersold => "undersold",
            Self::Inconsistent => "inconsistent",
            Self::Errors => "errors",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "correct" => Ok(Self::Correct),
            "oversold" => Ok(Self::Oversold),
            "undersold" => Ok(Self::Undersold),
            "inconsistent" => Ok(Self::Inconsistent),
            "errors" => Ok(Self::Errors),
            other => Err(format!(
                "unknown verdict {other:?} (correct, oversold, undersold, inconsistent, errors)"
            )),
        }
    }
}

/// The verdict with the figures that explain it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    /// The overall verdict.
    pub verdict: Verdict,
    /// Order rows beyond the tickets on sale (0 unless oversold).
    pub oversold: i64,
    /// 201 answers beyond the tickets on sale, whether or not the database
    /// took them: buyers told "yours" for units that do not exist.
    #[serde(default)]
    pub oversold_answers: i64,
    /// Rows beyond one per buyer.
    pub duplicate_orders: i64,
    /// Buyers answered 201 who hold no row (a sale the server lost).
    #[serde(default)]
    pub answered_without_order: i64,
    /// Rows whose buyer was never answered 201 and did not lose an answer
    /// to an error (a sale nobody was told about, or someone else's row).
    #[serde(default)]
    pub orders_without_answer: i64,
    /// Every rule the run broke, in plain words; empty when correct.
    pub problems: Vec<String>,
}

/// How many orders a run should end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedOrders {
    /// A sell-out: exactly min(tickets, distinct buyers).
    SellOut {
        /// Different people among the buyers.
        distinct_buyers: i64,
    },
    /// A sustained run from a stock that never runs out: any number, but
    /// at least one (a run that sold nothing is not correct).
    Sustained,
}

/// Who the servers answered and who holds rows, when the caller knows.
#[derive(Debug, Clone, Copy)]
pub enum Identities<'a> {
    /// The load tool's case: every identity is known.
    Known {
        /// The user of every 201 answer (one entry per 201).
        answered: &'a [i64],
        /// Users whose last answer was a failure (an error, a timeout):
        /// their request may have committed, so a row of theirs is excused.
        failed: &'a [i64],
        /// The user of every order row (one entry per row), from
        /// [`crate::db::order_holders`].
        holders: &'a [i64],
    },
    /// Only the number of 201s is known: the identity rule is skipped.
    CountOnly {
        /// 201 answers.
        answered: i64,
    },
}

impl Identities<'_> {
    fn answered(&self) -> i64 {
        match self {
            Self::Known { answered, .. } => answered.len() as i64,
            Self::CountOnly { answered } => *answered,
        }
    }
}

/// Everything a run is judged from.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// Units the run put on sale: `tickets.total` must read this, and no
    /// more may sell.
    pub tickets: i64,
    /// How many should have sold.
    pub expected: ExpectedOrders,
    /// Who was answered 201 and who holds rows.
    pub identities: Identities<'a>,
    /// Failed answers: 5xx other than 503, transport errors, unexpected
    /// statuses. Any makes the run fail.
    pub errors: u64,
    /// The database's counts.
    pub truth: &'a DbTruth,
}

/// Judges a run by the rules in this module's header.
pub fn judge_run(evidence: &Evidence<'_>) -> Judgement {
    let Evidence {
        tickets,
        expected,
        identities,
        errors,
        truth,
    } = *evidence;
    let mut problems = Vec::new();
    let oversold = (truth.orders - tickets).max(0);
    let oversold_answers = (identities.answered() - tickets).max(0);
    let duplicate_orders = truth.duplicate_orders();
    if oversold > 0 {
        problems.push(format!(
            "{} orders for {tickets} tickets: {oversold} sold that did not exist",
            truth.orders
        ));
    }
    if oversold_answers > 0 {
        problems.push(format!(
            "{} buyers were answered 201 for {tickets} tickets: {oversold_answers} told they \
             bought a ticket that did not exist",
            identities.answered()
        ));
    }

    let mut inconsistent = consistency_problems(tickets, truth, &mut problems);
    let (answered_without_order, orders_without_answer) =
        identity_problems(&identities, truth, &mut problems);
    inconsistent |= answered_without_order > 0 || orders_without_answer > 0;

    if errors > 0 {
        problems.push(format!(
            "{errors} answers were failures (5xx, refused, timed out or unexpected)"
        ));
    }
    let too_few = match expected {
        ExpectedOrders::SellOut { distinct_buyers } => {
            let should = tickets.min(distinct_buyers);
            (truth.orders < should).then(|| {
                format!(
                    "{} orders, but {should} tickets had buyers waiting",
                    truth.orders
                )
            })
        }
        ExpectedOrders::Sustained => (truth.orders == 0)
            .then(|| "a sustained run sold nothing: nothing was shown to work".to_owned()),
    };
    let undersold = too_few.is_some();
    problems.extend(too_few);

    let verdict = if oversold > 0 || oversold_answers > 0 {
        Verdict::Oversold
    } else if inconsistent {
        Verdict::Inconsistent
    } else if errors > 0 {
        Verdict::Errors
    } else if undersold {
        Verdict::Undersold
    } else {
        debug_assert!(problems.is_empty(), "{problems:?}");
        Verdict::Correct
    };
    Judgement {
        verdict,
        oversold,
        oversold_answers,
        duplicate_orders,
        answered_without_order,
        orders_without_answer,
        problems,
    }
}

/// Rules on the database's own figures: the total, the stock, duplicates.
/// Returns whether any is broken.
fn consistency_problems(tickets: i64, truth: &DbTruth, problems: &mut Vec<String>) -> bool {
    let before = problems.len();
    if i64::from(truth.total) != tickets {
        problems.push(format!(
            "tickets.total reads {} but the run put {tickets} on sale",
            truth.total
        ));
    }
    let expected_stock = tickets - truth.orders;
    if i64::from(truth.stock) != expected_stock.max(0) || expected_stock < 0 {
        problems.push(format!(
            "stock reads {} but {tickets} - {} orders = {expected_stock}: updates were lost",
            truth.stock, truth.orders
        ));
    }
    let duplicates = truth.duplicate_orders();
    if duplicates > 0 {
        problems.push(format!("{duplicates} buyers hold more than one order"));
    }
    problems.len() > before
}

/// The identity rule: the users answered 201 are the users holding rows.
/// Returns (answered without a row, rows without an answer).
fn identity_problems(
    identities: &Identities<'_>,
    truth: &DbTruth,
    problems: &mut Vec<String>,
) -> (i64, i64) {
    let (answered, failed, holders) = match *identities {
        Identities::Known {
            answered,
            failed,
            holders,
        } => (answered, failed, holders),
        Identities::CountOnly { answered } => {
            if answered != truth.orders {
                problems.push(format!(
                    "servers answered 201 {answered} times but the database holds {} orders",
                    truth.orders
                ));
                return (0, (truth.orders - answered).abs());
            }
            return (0, 0);
        }
    };
    let answered_set: BTreeSet<i64> = answered.iter().copied().collect();
    let failed_set: BTreeSet<i64> = failed.iter().copied().collect();
    let holder_set: BTreeSet<i64> = holders.iter().copied().collect();
    let repeated = answered.len() - answered_set.len();
    if repeated > 0 {
        problems.push(format!(
            "{repeated} answers of 201 went to a buyer already answered 201"
        ));
    }
    let lost: Vec<i64> = answered_set.difference(&holder_set).copied().collect();
    let unannounced: Vec<i64> = holder_set
        .difference(&answered_set)
        .filter(|user| !failed_set.contains(user))
        .copied()
        .collect();
    if !lost.is_empty() {
        problems.push(format!(
            "{} buyers answered 201 hold no order (e.g. user {})",
            lost.len(),
            lost[0]
        ));
    }
    if !unannounced.is_empty() {
        problems.push(format!(
            "{} orders belong to users never answered 201 (e.g. user {})",
            unannounced.len(),
            unannounced[0]
        ));
    }
    let answered_without_order = lost.len() as i64 + repeated as i64;
    (answered_without_order, unannounced.len() as i64)
}

/// Judges a run from counts alone: `tickets` went on sale, `distinct_buyers`
/// different people tried, the servers answered 201 `http_successes` times,
/// and the database holds `truth`.
///
/// Weaker than [`judge_run`]: without identities a server that writes rows
/// for the wrong people passes. For callers that did not record who was
/// answered; the load tool always uses [`judge_run`].
pub fn judge(
    tickets: i64,
    distinct_buyers: i64,
    http_successes: i64,
    truth: &DbTruth,
) -> Judgement {
    judge_run(&Evidence {
        tickets,
        expected: ExpectedOrders::SellOut { distinct_buyers },
        identities: Identities::CountOnly {
            answered: http_successes,
        },
        errors: 0,
        truth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth(total: i32, stock: i32, orders: i64, distinct_buyers: i64) -> DbTruth {
        DbTruth {
            total,
            stock,
            orders,
            distinct_buyers,
        }
    }

    fn users(range: std::ops::Range<i64>) -> Vec<i64> {
        range.collect()
    }

    /// A sell-out of `tickets` to 1000 buyers, judged with identities.
    fn sell_out(
        tickets: i64,
        answered: &[i64],
        failed: &[i64],
        holders: &[i64],
        errors: u64,
        truth: &DbTruth,
    ) -> Judgement {
        judge_run(&Evidence {
            tickets,
            expected: ExpectedOrders::SellOut {
                distinct_buyers: 1000,
            },
            identities: Identities::Known {
                answered,
                failed,
                holders,
            },
            errors,
            truth,
        })
    }

    #[test]
    fn exactly_right_is_correct() {
        let j = judge(100, 1000, 100, &truth(100, 0, 100, 100));
        assert_eq!(j.verdict, Verdict::Correct);
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(j.oversold, 0);
        let buyers = users(1..101);
        let j = sell_out(100, &buyers, &[], &buyers, 0, &truth(100, 0, 100, 100));
        assert_eq!(j.verdict, Verdict::Correct, "{:?}", j.problems);
    }

    #[test]
    fn rows_written_for_other_users_than_those_answered_are_inconsistent() {
        // Every count agrees: 100 answers, 100 rows, stock 0. Only the
        // identities give the server away.
        let j = sell_out(
            100,
            &users(1..101),
            &[],
            &users(5001..5101),
            0,
            &truth(100, 0, 100, 100),
        );
        assert_eq!(j.verdict, Verdict::Inconsistent);
        assert_eq!(j.answered_without_order, 100);
        assert_eq!(j.orders_without_answer, 100);
    }

    #[test]
    fn one_row_swapped_for_a_stranger_is_enough_to_fail() {
        let answered = users(1..101);
        let mut holders = users(1..100);
        holders.push(9999);
        let j = sell_out(100, &answered, &[], &holders, 0, &truth(100, 0, 100, 100));
        assert_eq!(j.verdict, Verdict::Inconsistent);
        assert_eq!((j.answered_without_order, j.orders_without_answer), (1, 1));
    }

    #[test]
    fn a_row_of_a_buyer_whose_answer_was_lost_is_excused_but_the_error_is_not() {
        // User 100's request timed out after the server committed.
        let answered = users(1..100);
        let holders = users(1..101);
        let j = sell_out(
            100,
            &answered,
            &[100],
            &holders,
            1,
            &truth(100, 0, 100, 100),
        );
        assert_eq!(j.orders_without_answer, 0);
        assert_eq!(j.verdict, Verdict::Errors, "{:?}", j.problems);
    }

    #[test]
    fn five_hundreds_and_transport_errors_are_never_correct() {
        // 100 sold correctly; the other 900 buyers were answered 500.
        let buyers = users(1..101);
        let j = sell_out(100, &buyers, &[], &buyers, 900, &truth(100, 0, 100, 100));
        assert_eq!(j.verdict, Verdict::Errors);
        assert!(
            j.problems[0].contains("900 answers were failures"),
            "{:?}",
            j.problems
        );
    }

    #[test]
    fn errors_that_left_tickets_unsold_are_errors_not_undersold() {
        let j = sell_out(100, &[], &[], &[], 1000, &truth(100, 100, 0, 0));
        assert_eq!(j.verdict, Verdict::Errors);
    }

    #[test]
    fn a_total_other_than_the_run_put_on_sale_is_inconsistent() {
        let buyers = users(1..101);
        let j = sell_out(100, &buyers, &[], &buyers, 0, &truth(150, 0, 100, 100));
        assert_eq!(j.verdict, Verdict::Inconsistent);
        assert!(
            j.problems[0].contains("tickets.total reads 150"),
            "{:?}",
            j.problems
        );
    }

    #[test]
    fn answers_beyond_the_stock_that_the_database_refused_are_oversold_answers() {
        // 150 buyers told "yours"; the database took 100 of them.
        let answered = users(1..151);
        let holders = users(1..101);
        let j = sell_out(100, &answered, &[], &holders, 0, &truth(100, 0, 100, 100));
        assert_eq!(j.verdict, Verdict::Oversold);
        assert_eq!(j.oversold, 0, "no row beyond the stock");
        assert_eq!(j.oversold_answers, 50);
        assert_eq!(j.answered_without_order, 50);
    }

    #[test]
    fn two_201s_to_one_buyer_are_inconsistent() {
        let mut answered = users(1..100);
        answered.push(1);
        let holders = users(1..100);
        let j = sell_out(100, &answered, &[], &holders, 0, &truth(100, 1, 99, 99));
        assert_eq!(j.verdict, Verdict::Inconsistent, "{:?}", j.problems);
    }

    #[test]
    fn a_sustained_run_that_sold_nothing_is_undersold() {
        let judged = |orders: i64, stock: i32| {
            let holders = users(1..orders + 1);
            judge_run(&Evidence {
                tickets: 1_000_000,
                expected: ExpectedOrders::Sustained,
                identities: Identities::Known {
                    answered: &holders,
                    failed: &[],
                    holders: &holders,
                },
                errors: 0,
                truth: &truth(1_000_000, stock, orders, orders),
            })
        };
        assert_eq!(judged(0, 1_000_000).verdict, Verdict::Undersold);
        assert_eq!(judged(5_000, 995_000).verdict, Verdict::Correct);
        assert_eq!(judged(5_000, 996_000).verdict, Verdict::Inconsistent);
    }

    #[test]
    fn fewer_buyers_than_tickets_is_correct_when_each_bought_one() {
        let j = judge(100, 30, 30, &truth(100, 70, 30, 30));
        assert_eq!(j.verdict, Verdict::Correct);
    }

    #[test]
    fn lost_updates_with_more_orders_than_tickets_are_oversold() {
        // The Level 0 picture: 1000 orders while stock still reads 65.
        let j = judge(100, 1000, 1000, &truth(100, 65, 1000, 1000));
        assert_eq!(j.verdict, Verdict::Oversold);
        assert_eq!(j.oversold, 900);
        assert_eq!(j.oversold_answers, 900);
        assert!(j.problems.iter().any(|p| p.contains("updates were lost")));
    }

    #[test]
    fn too_few_orders_is_undersold() {
        let j = judge(100, 1000, 90, &truth(100, 10, 90, 90));
        assert_eq!(j.verdict, Verdict::Undersold);
    }

    #[test]
    fn duplicate_rows_are_inconsistent() {
        let j = judge(100, 1000, 100, &truth(100, 0, 100, 99));
        assert_eq!(j.verdict, Verdict::Inconsistent);
        assert_eq!(j.duplicate_orders, 1);
    }

    #[test]
    fn http_successes_that_disagree_with_the_rows_are_inconsistent() {
        let j = judge(100, 1000, 99, &truth(100, 0, 100, 100));
        assert_eq!(j.verdict, Verdict::Inconsistent);
        assert!(j.problems[0].contains("201 99 times"), "{:?}", j.problems);
    }

    #[test]
    fn stock_that_disagrees_with_the_rows_is_inconsistent() {
        let j = judge(100, 40, 40, &truth(100, 61, 40, 40));
        assert_eq!(j.verdict, Verdict::Inconsistent);
    }

    #[test]
    fn verdicts_round_trip_through_their_names() {
        for v in [
            Verdict::Correct,
            Verdict::Oversold,
            Verdict::Undersold,
            Verdict::Inconsistent,
            Verdict::Errors,
        ] {
            assert_eq!(v.as_str().parse::<Verdict>().unwrap(), v);
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{v}\""));
        }
    }
}
