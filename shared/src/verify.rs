//! Judging a rush from the database.
//!
//! HTTP answers can lie (a server may answer 201 and lose the write, or sell
//! a unit twice); the rows in PostgreSQL cannot. A run is judged by comparing
//! what should have happened with [`DbTruth`], and the HTTP count is only one
//! more thing that must agree.

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
    /// match the orders (a lost update), duplicate rows, or 201s that do not
    /// match the rows.
    Inconsistent,
}

impl Verdict {
    /// The snake_case name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Correct => "correct",
            Self::Oversold => "oversold",
            Self::Undersold => "undersold",
            Self::Inconsistent => "inconsistent",
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
            other => Err(format!("unknown verdict {other:?}")),
        }
    }
}

/// The verdict with the figures that explain it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    /// The overall verdict.
    pub verdict: Verdict,
    /// Orders beyond the tickets on sale (0 unless oversold).
    pub oversold: i64,
    /// Rows beyond one per buyer.
    pub duplicate_orders: i64,
    /// Every rule the run broke, in plain words; empty when correct.
    pub problems: Vec<String>,
}

/// Judges a run: `tickets` went on sale, `distinct_buyers` different people
/// tried, the servers answered 201 `http_successes` times, and the database
/// holds `truth`.
///
/// Correct means: orders == min(tickets, distinct buyers), stock == tickets -
/// orders, no duplicate (ticket, user), and 201s == orders.
pub fn judge(
    tickets: i64,
    distinct_buyers: i64,
    http_successes: i64,
    truth: &DbTruth,
) -> Judgement {
    let expected = tickets.min(distinct_buyers);
    let oversold = (truth.orders - tickets).max(0);
    let duplicate_orders = truth.duplicate_orders();
    let mut problems = Vec::new();

    if oversold > 0 {
        problems.push(format!(
            "{} orders for {tickets} tickets: {oversold} sold that did not exist",
            truth.orders
        ));
    }
    if truth.orders < expected {
        problems.push(format!(
            "{} orders, but {expected} tickets had buyers waiting",
            truth.orders
        ));
    }
    let expected_stock = tickets - truth.orders;
    if i64::from(truth.stock) != expected_stock.max(0) || expected_stock < 0 {
        problems.push(format!(
            "stock reads {} but {tickets} - {} orders = {expected_stock}: updates were lost",
            truth.stock, truth.orders
        ));
    }
    if duplicate_orders > 0 {
        problems.push(format!(
            "{duplicate_orders} buyers hold more than one order"
        ));
    }
    if http_successes != truth.orders {
        problems.push(format!(
            "servers answered 201 {http_successes} times but the database holds {} orders",
            truth.orders
        ));
    }

    let verdict = if oversold > 0 {
        Verdict::Oversold
    } else if duplicate_orders > 0 {
        Verdict::Inconsistent
    } else if truth.orders < expected {
        Verdict::Undersold
    } else if problems.is_empty() {
        Verdict::Correct
    } else {
        Verdict::Inconsistent
    };
    Judgement {
        verdict,
        oversold,
        duplicate_orders,
        problems,
    }
}

/// Judges a sustained run, where the stock is large and never sells out, so
/// "how many should have sold" is unknown: the rows must agree with the
/// stock, with each other and with the 201s, and never exceed the stock.
pub fn judge_sustained(tickets: i64, http_successes: i64, truth: &DbTruth) -> Judgement {
    // With a known expectation equal to what sold, only the other rules remain.
    let mut judgement = judge(tickets, truth.orders.min(tickets), http_successes, truth);
    judgement
        .problems
        .retain(|p| !p.contains("tickets had buyers waiting"));
    judgement
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

    #[test]
    fn exactly_right_is_correct() {
        let j = judge(100, 1000, 100, &truth(100, 0, 100, 100));
        assert_eq!(j.verdict, Verdict::Correct);
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(j.oversold, 0);
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
        let j = judge(100, 1000, 101, &truth(100, 0, 100, 100));
        assert_eq!(j.verdict, Verdict::Inconsistent);
        assert!(j.problems[0].contains("201 101 times"));
    }

    #[test]
    fn stock_that_disagrees_with_the_rows_is_inconsistent() {
        let j = judge(100, 40, 40, &truth(100, 61, 40, 40));
        assert_eq!(j.verdict, Verdict::Inconsistent);
    }

    #[test]
    fn sustained_runs_are_judged_without_a_sell_out() {
        let ok = judge_sustained(1_000_000, 5_000, &truth(1_000_000, 995_000, 5_000, 5_000));
        assert_eq!(ok.verdict, Verdict::Correct);
        let lost = judge_sustained(1_000_000, 5_000, &truth(1_000_000, 996_000, 5_000, 5_000));
        assert_eq!(lost.verdict, Verdict::Inconsistent);
    }

    #[test]
    fn verdicts_round_trip_through_their_names() {
        for v in [
            Verdict::Correct,
            Verdict::Oversold,
            Verdict::Undersold,
            Verdict::Inconsistent,
        ] {
            assert_eq!(v.as_str().parse::<Verdict>().unwrap(), v);
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{v}\""));
        }
    }
}
