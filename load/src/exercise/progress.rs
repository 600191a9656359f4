//! The learner's progress: which exercises passed and how many hints each
//! has shown, in `target/exercise-progress.json` (next to the build, so a
//! fresh clone starts fresh and nothing lands in git).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::catalogue::workspace_root;

/// One exercise's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The last check passed.
    pub passed: bool,
    /// Checks run.
    pub checks: u32,
    /// Hints revealed so far (each failed check reveals one more).
    pub hints_shown: usize,
}

/// Every exercise's progress, by number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book(pub BTreeMap<u8, Progress>);

impl Book {
    /// Where it is kept: `CARGO_TARGET_DIR` or the workspace's `target/`.
    pub fn path() -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("exercise-progress.json")
    }

    /// Reads it; a missing or unreadable file is a fresh start.
    pub fn load() -> Self {
        std::fs::read_to_string(Self::path())
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// Writes it back.
    pub fn save(&self) -> anyhow::Result<()> {
        let path = Self::path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// One exercise's progress (fresh if never checked).
    pub fn get(&self, number: u8) -> Progress {
        self.0.get(&number).cloned().unwrap_or_default()
    }

    /// Records a check's outcome; a failure reveals one more hint (of
    /// `hints` available). Returns the hint newly revealed, if any.
    pub fn record(&mut self, number: u8, passed: bool, hints: usize) -> Option<usize> {
        let entry = self.0.entry(number).or_default();
        entry.checks += 1;
        entry.passed = passed;
        if passed || entry.hints_shown >= hints {
            return None;
        }
        entry.hints_shown += 1;
        Some(entry.hints_shown)
    }

    /// Forgets an exercise (after a reset).
    pub fn forget(&mut self, number: u8) {
        self.0.remove(&number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failed_check_reveals_one_more_hint_until_none_are_left() {
        let mut book = Book::default();
        assert_eq!(book.record(3, false, 2), Some(1));
        assert_eq!(book.record(3, false, 2), Some(2));
        assert_eq!(book.record(3, false, 2), None);
        assert_eq!(book.record(3, true, 2), None);
        let progress = book.get(3);
        assert!(progress.passed);
        assert_eq!((progress.checks, progress.hints_shown), (4, 2));
        book.forget(3);
        assert_eq!(book.get(3), Progress::default());
    }
}
