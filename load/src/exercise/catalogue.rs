//! What `load exercise` knows about each exercise: where its files are, how
//! to rush it so that a wrong answer fails every time, and what usually
//! causes each way of failing.
//!
//! The load tool does not link the learner's code (a file that does not
//! compile must not stop `load exercise reset`): it builds the `exercises`
//! crate with cargo and starts its `exercise-server` binary.

use std::path::PathBuf;

use super::judge::RushSize;

/// One exercise as the load tool sees it.
#[derive(Debug, Clone, Copy)]
pub struct ExerciseInfo {
    /// Its number (`load exercise check N`).
    pub number: u8,
    /// Its folder under `exercises/` (statement and learner file).
    pub slug: &'static str,
    /// One line: what the learner does.
    pub title: &'static str,
    /// How many servers the check starts (one for the exercises about a
    /// lock in one server's memory).
    pub servers: usize,
    /// The servers' `--think-time-ms`: the window that makes the stub's race
    /// happen on every run.
    pub think_time_ms: u64,
    /// The buyers are only as many people as there are tickets, each
    /// clicking many times: exercise 9 needs repeat clicks, and with as many
    /// people as tickets a single wasted unit leaves one person without.
    pub people_as_tickets: bool,
    /// The rush `load exercise check` sends by default. Smaller for the
    /// exercises whose waiting buyers spin on a Redis lock: a thousand
    /// spinners cost more than the lesson needs.
    pub size: RushSize,
    /// Whether its servers need Redis.
    pub needs_redis: bool,
    /// Every buyer double-clicks with one `Idempotency-Key`, and every key
    /// must get one answer (exercise 8; see [`super::twins`]).
    pub double_click: bool,
    /// A correct answer must also have given up at least once (503 busy):
    /// exercise 4's bounded retries.
    pub must_give_up: bool,
    /// The lesson behind it.
    pub lesson: &'static str,
    /// The usual cause of a failed check, in a learner's words.
    pub likely_cause: &'static str,
}

/// Every exercise, in order.
pub const CATALOGUE: &[ExerciseInfo] = &[
    ExerciseInfo {
        number: 1,
        slug: "01-one-lock",
        title: "make Level 0 correct on one server with a lock",
        servers: 1,
        think_time_ms: 20,
        people_as_tickets: false,
        size: RushSize::FULL,
        needs_redis: false,
        double_click: false,
        must_give_up: false,
        lesson: "docs/01-local-locks.md",
        likely_cause: "two buyers ran read-check-write at the same time: both read the same stock \
            and both wrote stock-1. Nothing makes the second buyer wait for the first.",
    },
    ExerciseInfo {
        number: 2,
        slug: "02-lock-across-commit",
        title: "make the lock hold across the commit",
        servers: 1,
        think_time_ms: 20,
        people_as_tickets: false,
        size: RushSize::FULL,
        needs_redis: false,
        double_click: false,
        must_give_up: false,
        lesson: "docs/01-local-locks.md",
        likely_cause:
            "the lock was released before COMMIT: the next buyer read the stock as it was \
            before our sale (our write was not visible yet) and wrote the same stock-1.",
    },
    ExerciseInfo {
        number: 3,
        slug: "03-row-lock",
        title: "a pessimistic row lock in PostgreSQL",
        servers: 2,
        think_time_ms: 20,
        people_as_tickets: false,
        size: RushSize::FULL,
        needs_redis: false,
        double_click: false,
        must_give_up: false,
        lesson: "docs/02-db-locks.md",
        likely_cause: "a plain SELECT locks nothing, even inside a transaction: buyers on both \
            servers read the same stock, and each wrote its own stock-1 over the others'.",
    },
    ExerciseInfo {
        number: 4,
        slug: "04-optimistic-retry",
        title: "an optimistic retry that gives up properly",
        servers: 2,
        think_time_ms: 20,
        people_as_tickets: false,
        size: RushSize::FULL,
        needs_redis: false,
        double_click: false,
        must_give_up: true,
        lesson: "docs/02-db-locks.md",
        likely_cause: "a lost race is not a server fault: it should be tried again in a fresh \
            transaction, a bounded number of times, and then answered 503 busy (a buyer clicks \
            again), never 500.",
    },
    ExerciseInfo {
        number: 5,
        slug: "05-atomic-update",
        title: "one atomic conditional UPDATE",
        servers: 2,
        think_time_ms: 20,
        people_as_tickets: false,
        size: RushSize::FULL,
        needs_redis: false,
        double_click: false,
        must_give_up: false,
        lesson: "docs/02-db-locks.md",
        likely_cause: "the check (stock > 0) was made on a read, and the write happened later: \
            by then the stock was 0, and PostgreSQL's CHECK (stock >= 0) refused the write with \
            an error. The check has to be part of the write.",
    },
    ExerciseInfo {
        number: 6,
        slug: "06-owner-release",
        title: "an owner-checked release of a Redis lock (Lua)",
        servers: 2,
        think_time_ms: 20,
        people_as_tickets: false,
        size: RushSize::SPINNING,
        needs_redis: true,
        double_click: false,
        must_give_up: false,
        lesson: "docs/03-redis-lock.md",
        likely_cause: "a buyer who gave up waiting still ran the release, and the release deleted \
            the lock whoever held it: the holder's lock vanished mid-sale and a third buyer \
            walked in.",
    },
    ExerciseInfo {
        number: 7,
        slug: "07-fencing",
        title: "a fencing check in SQL",
        servers: 2,
        think_time_ms: 40,
        people_as_tickets: false,
        size: RushSize::SPINNING,
        needs_redis: true,
        double_click: false,
        must_give_up: false,
        lesson: "docs/03-redis-lock.md",
        likely_cause:
            "the lock's lease ran out while its holder was still working, Redis gave the \
            lock to the next buyer, and the database accepted the stale holder's write.",
    },
    ExerciseInfo {
        number: 8,
        slug: "08-idempotency-key",
        title: "an idempotency key recorded in the order's transaction",
        servers: 2,
        think_time_ms: 20,
        people_as_tickets: false,
        size: RushSize::FULL,
        needs_redis: false,
        double_click: true,
        must_give_up: false,
        lesson: "docs/04-idempotency.md",
        likely_cause: "both clicks looked the key up before either had written it down, so both \
            found nothing and both bought: one sold, the other was refused, and the buyer was \
            told two different things. Looking up and writing down are two steps; another \
            request with the same key can run between them.",
    },
    ExerciseInfo {
        number: 9,
        slug: "09-lua-purchase",
        title: "the Level 4 Lua purchase (duplicate check before the stock)",
        servers: 2,
        think_time_ms: 0,
        people_as_tickets: true,
        size: RushSize::FULL,
        needs_redis: true,
        double_click: false,
        must_give_up: false,
        lesson: "docs/05-lock-free.md",
        likely_cause: "the script took a unit of stock before asking whether this buyer already \
            had one: every repeat click spent a unit that nobody got.",
    },
    ExerciseInfo {
        number: 10,
        slug: "10-lock-order",
        title: "a seat hold that takes its locks in a global order",
        servers: 2,
        think_time_ms: 20,
        people_as_tickets: false,
        size: RushSize::FULL,
        needs_redis: false,
        double_click: false,
        must_give_up: false,
        lesson: "docs/06-box-office.md",
        likely_cause: "one buyer held seat 1 and waited for seat 2 while another held seat 2 and \
            waited for seat 1: neither can ever go on, and PostgreSQL had to kill one of them \
            (deadlock detected). Locks taken in different orders deadlock.",
    },
];

/// The exercise numbered `number`.
pub fn info(number: u8) -> anyhow::Result<&'static ExerciseInfo> {
    CATALOGUE
        .iter()
        .find(|e| e.number == number)
        .ok_or_else(|| {
            let known: Vec<String> = CATALOGUE.iter().map(|e| e.number.to_string()).collect();
            anyhow::anyhow!("no exercise {number}; there are: {}", known.join(", "))
        })
}

/// The workspace this load tool was built from: where `exercises/` is.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

impl ExerciseInfo {
    /// The statement, `exercises/NN-name/README.md`.
    pub fn statement(&self) -> PathBuf {
        workspace_root()
            .join("exercises")
            .join(self.slug)
            .join("README.md")
    }

    /// The learner's file, `exercises/NN-name/sell.rs`.
    pub fn learner_file(&self) -> PathBuf {
        workspace_root()
            .join("exercises")
            .join(self.slug)
            .join("sell.rs")
    }

    /// The pristine stub, `exercises/stubs/NN-name.rs`.
    pub fn stub_file(&self) -> PathBuf {
        workspace_root()
            .join("exercises/stubs")
            .join(format!("{}.rs", self.slug))
    }

    /// The Redis keys its servers write for `ticket` (`exercises::kit`
    /// names them): cleared before a check, so a rush starts from nothing.
    pub fn redis_keys(&self, ticket: i64) -> Vec<String> {
        ["lock", "stock", "buyers"]
            .iter()
            .map(|kind| format!("exercise:{kind}:{ticket}"))
            .collect()
    }

    /// The hints of its statement: the numbered items under `## Hints`.
    pub fn hints(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.statement()).unwrap_or_default();
        parse_hints(&text)
    }
}

/// The numbered list under a `## Hints` heading, one string per item
/// (continuation lines joined).
pub fn parse_hints(markdown: &str) -> Vec<String> {
    let mut hints: Vec<String> = Vec::new();
    let mut inside = false;
    for line in markdown.lines() {
        if line.starts_with("## ") {
            inside = line.trim() == "## Hints";
            continue;
        }
        if !inside {
            continue;
        }
        let trimmed = line.trim();
        let numbered = trimmed
            .split_once(". ")
            .filter(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        match numbered {
            Some((_, text)) => hints.push(text.to_owned()),
            None if !trimmed.is_empty() => {
                if let Some(last) = hints.last_mut() {
                    last.push(' ');
                    last.push_str(trimmed);
                }
            }
            None => {}
        }
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_the_numbered_items_under_the_hints_heading() {
        let text = "# Ex\n\n## What\n1. not a hint\n\n## Hints\n\n1. First\n   more.\n2. Second\n\n## After\n3. no";
        assert_eq!(parse_hints(text), vec!["First more.", "Second"]);
    }

    #[test]
    fn every_exercise_has_a_statement_a_file_a_stub_and_hints() {
        for exercise in CATALOGUE {
            assert!(exercise.learner_file().exists(), "{}", exercise.slug);
            assert!(exercise.stub_file().exists(), "{}", exercise.slug);
            assert!(exercise.hints().len() >= 2, "{} needs hints", exercise.slug);
        }
    }
}
