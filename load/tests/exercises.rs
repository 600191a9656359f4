//! `load exercise` from the outside: the list names every exercise and its
//! statement, and a number that does not exist is a tool failure (exit 2)
//! that says which numbers do. (Checks themselves are proven in
//! `exercises/tests/checks.rs`: every stub fails, every solution passes.)

use std::process::Output;

use load::exercise::catalogue::CATALOGUE;

fn load(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args(args)
        // Progress is read from here; a private directory keeps the test
        // from seeing (or writing) a learner's progress.
        .env(
            "CARGO_TARGET_DIR",
            std::env::temp_dir().join("ticket-rush-exercise-cli-test"),
        )
        .output()
        .expect("load runs")
}

/// The list shows every exercise, its statement and its status.
#[test]
fn the_list_names_every_exercise_and_its_statement() {
    let output = load(&["exercise"]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    for exercise in CATALOGUE {
        assert!(
            text.contains(exercise.title),
            "{} missing in:\n{text}",
            exercise.title
        );
        assert!(
            text.contains(&format!("exercises/{}/README.md", exercise.slug)),
            "{text}"
        );
    }
    assert!(text.contains("to do"), "{text}");
}

/// Checking or resetting an exercise that does not exist changes nothing
/// and says which exercises there are.
#[test]
fn an_unknown_exercise_is_refused_with_the_known_numbers() {
    for action in ["check", "reset"] {
        let output = load(&["exercise", action, "99"]);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains("no exercise 99; there are: 1, 2, 3"), "{err}");
    }
}
