//! Turning a result into an exit status, as k6 does with thresholds, so a CI
//! script can run `load run --expect correct --max-p99-ms 500` against any
//! server that speaks the API and trust the exit code.
//!
//! | exit | meaning |
//! | --- | --- |
//! | 0 | every round earned the expected verdict and met every threshold |
//! | 1 | the run happened, but a verdict or a threshold was not met |
//! | 2 | the tool could not run or judge (bad arguments, a target or database that does not answer, a crash) |

use std::fmt;
use std::str::FromStr;

use ticket_core::Verdict;

use crate::model::Report;

/// Exit status: every expectation met.
pub const EXIT_MET: u8 = 0;
/// Exit status: the run finished, but a verdict or threshold was not met.
pub const EXIT_NOT_MET: u8 = 1;
/// Exit status: the tool itself failed (clap's usage errors also exit 2).
pub const EXIT_TOOL_FAILED: u8 = 2;

/// The verdict a run must earn: one verdict, or `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectVerdict(pub Option<Verdict>);

impl FromStr for ExpectVerdict {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "any" {
            return Ok(Self(None));
        }
        s.parse::<Verdict>()
            .map(|v| Self(Some(v)))
            .map_err(|e| format!("{e}, or any"))
    }
}

impl fmt::Display for ExpectVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(verdict) => write!(f, "{verdict}"),
            None => f.write_str("any"),
        }
    }
}

/// What every round of a run must meet.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectations {
    /// The verdict (`None`: any verdict).
    pub verdict: Option<Verdict>,
    /// Highest p99 latency allowed, in milliseconds.
    pub max_p99_ms: Option<f64>,
    /// Most failed answers allowed (`errors`).
    pub max_errors: Option<u64>,
    /// Lowest request rate allowed (`throughput_rps`: HTTP answers per
    /// second, retries included).
    pub min_rps: Option<f64>,
}

impl Default for Expectations {
    /// `correct`, no thresholds: a run that is not correct is not met.
    fn default() -> Self {
        Self {
            verdict: Some(Verdict::Correct),
            max_p99_ms: None,
            max_errors: None,
            min_rps: None,
        }
    }
}

impl Expectations {
    /// Every expectation `report` breaks, in words; empty when all are met.
    pub fn broken(&self, report: &Report) -> Vec<String> {
        let mut broken = Vec::new();
        if let Some(expected) = self.verdict {
            if report.verdict != expected {
                broken.push(format!(
                    "verdict is {}, expected {expected}",
                    report.verdict
                ));
            }
        }
        if let Some(max) = self.max_p99_ms {
            if report.latency_ms.p99 > max {
                broken.push(format!(
                    "p99 latency {:.1} ms is above --max-p99-ms {max}",
                    report.latency_ms.p99
                ));
            }
        }
        if let Some(max) = self.max_errors {
            if report.errors > max {
                broken.push(format!(
                    "{} errors are above --max-errors {max}",
                    report.errors
                ));
            }
        }
        if let Some(min) = self.min_rps {
            if report.throughput_rps < min {
                broken.push(format!(
                    "{:.0} requests/s is below --min-rps {min}",
                    report.throughput_rps
                ));
            }
        }
        broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Latency;
    use ticket_core::verify::Judgement;

    fn report(verdict: Verdict, p99: f64, errors: u64, rps: f64) -> Report {
        Report {
            errors,
            throughput_rps: rps,
            latency_ms: Latency {
                p99,
                ..Latency::default()
            },
            ..Report::judged(Judgement {
                verdict,
                oversold: 0,
                oversold_answers: 0,
                duplicate_orders: 0,
                answered_without_order: 0,
                orders_without_answer: 0,
                problems: Vec::new(),
            })
        }
    }

    #[test]
    fn by_default_only_a_correct_run_is_met() {
        let expect = Expectations::default();
        assert!(expect
            .broken(&report(Verdict::Correct, 9e9, 0, 0.0))
            .is_empty());
        let broken = expect.broken(&report(Verdict::Oversold, 1.0, 0, 1.0));
        assert_eq!(broken, ["verdict is oversold, expected correct"]);
    }

    #[test]
    fn each_threshold_is_checked_on_its_own() {
        let expect = Expectations {
            verdict: None,
            max_p99_ms: Some(500.0),
            max_errors: Some(0),
            min_rps: Some(100.0),
        };
        assert!(expect
            .broken(&report(Verdict::Oversold, 500.0, 0, 100.0))
            .is_empty());
        assert_eq!(
            expect
                .broken(&report(Verdict::Correct, 501.0, 0, 100.0))
                .len(),
            1
        );
        assert_eq!(
            expect
                .broken(&report(Verdict::Correct, 1.0, 1, 100.0))
                .len(),
            1
        );
        assert_eq!(
            expect.broken(&report(Verdict::Correct, 1.0, 0, 99.0)).len(),
            1
        );
    }

    #[test]
    fn any_or_a_verdict_name_is_accepted() {
        assert_eq!("any".parse::<ExpectVerdict>().unwrap(), ExpectVerdict(None));
        assert_eq!(
            "errors".parse::<ExpectVerdict>().unwrap(),
            ExpectVerdict(Some(Verdict::Errors))
        );
        assert!("fine".parse::<ExpectVerdict>().is_err());
    }
}
