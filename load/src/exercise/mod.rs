//! `load exercise`: the workshop. Lists the exercises with the learner's
//! progress, checks one with a real rush judged from the database, and
//! restores a stub.
//!
//! | module | role |
//! | --- | --- |
//! | [`catalogue`] | each exercise's files, rush shape and likely causes |
//! | [`judge`] | one rush at the learner's servers, and the findings in a learner's words |
//! | [`serve`] | building the `exercises` crate and starting its servers |
//! | [`progress`] | which exercises passed, how many hints were shown |
//! | [`twins`] | exercise 8's rush: every buyer double-clicks with one `Idempotency-Key` |

pub mod catalogue;
pub mod judge;
pub mod progress;
pub mod serve;
pub mod twins;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use self::catalogue::{info, ExerciseInfo, CATALOGUE};
use self::judge::{Judgement, RushSize};
use self::progress::Book;
use crate::expect::{EXIT_MET, EXIT_NOT_MET};

/// `load exercise [check N | reset N]`.
#[derive(Args, Debug)]
pub struct ExerciseArgs {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Build your code, serve it on two servers, rush it, and judge it from
    /// the database. Exits 0 when it passes, 1 when it does not.
    Check(CheckArgs),
    /// Put the exercise's file back as it was (your changes are lost).
    Reset {
        /// The exercise's number.
        number: u8,
    },
}

/// `load exercise check N`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The exercise's number.
    pub number: u8,
    /// Buyers released at once. Default: the exercise's (1000; 300 for
    /// the exercises that spin on a Redis lock).
    #[arg(long)]
    pub buyers: Option<usize>,
    /// Tickets on sale. Default: the exercise's (100; 30 for 6 and 7).
    #[arg(long)]
    pub tickets: Option<i32>,
    /// PostgreSQL to use. Default: DATABASE_URL, else a throwaway server.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis to use (exercises 6 to 9). Default: REDIS_URL, else a
    /// throwaway redis-server.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

/// Runs `load exercise ...`.
pub async fn exercise_command(args: ExerciseArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        None => {
            list();
            Ok(ExitCode::from(EXIT_MET))
        }
        Some(Action::Check(check)) => check_command(check).await,
        Some(Action::Reset { number }) => {
            reset(info(number)?)?;
            Ok(ExitCode::from(EXIT_MET))
        }
    }
}

fn list() {
    let book = Book::load();
    println!(
        "ticket-rush workshop: edit exercises/NN-name/sell.rs, then `load exercise check N`.\n"
    );
    println!("  #  status   exercise");
    for exercise in CATALOGUE {
        let progress = book.get(exercise.number);
        let status = match (progress.passed, progress.checks) {
            (true, _) => "passed ",
            (false, 0) => "to do  ",
            (false, _) => "failing",
        };
        let hints = if progress.hints_shown > 0 && !progress.passed {
            format!(" ({} hint(s) shown)", progress.hints_shown)
        } else {
            String::new()
        };
        println!(
            " {:>2}  {status}  {}{hints}\n             exercises/{}/README.md",
            exercise.number, exercise.title, exercise.slug
        );
    }
    println!("\nProgress is kept in {}.", Book::path().display());
}

fn reset(exercise: &ExerciseInfo) -> anyhow::Result<()> {
    let (stub, file) = (exercise.stub_file(), exercise.learner_file());
    std::fs::copy(&stub, &file)
        .with_context(|| format!("cannot copy {} to {}", stub.display(), file.display()))?;
    let mut book = Book::load();
    book.forget(exercise.number);
    book.save()?;
    println!("exercises/{}/sell.rs is the stub again.", exercise.slug);
    Ok(())
}

async fn check_command(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let exercise = info(args.number)?;
    println!("Exercise {}: {}", exercise.number, exercise.title);
    let size = RushSize {
        buyers: args.buyers.unwrap_or(exercise.size.buyers),
        tickets: args.tickets.unwrap_or(exercise.size.tickets),
    };
    let Some(judgement) = serve::build_and_check(exercise, &args, size).await? else {
        println!(
            "\nYour code does not compile (cargo's messages are above). Fix it and check again."
        );
        return Ok(ExitCode::from(EXIT_NOT_MET));
    };
    let hints = exercise.hints();
    let mut book = Book::load();
    let revealed = book.record(exercise.number, judgement.passed, hints.len());
    book.save()?;
    explain(
        exercise,
        &judgement,
        &hints,
        revealed,
        book.get(exercise.number).hints_shown,
    );
    Ok(ExitCode::from(if judgement.passed {
        EXIT_MET
    } else {
        EXIT_NOT_MET
    }))
}

fn explain(
    exercise: &ExerciseInfo,
    judgement: &Judgement,
    hints: &[String],
    revealed: Option<usize>,
    shown: usize,
) {
    let r = &judgement.report;
    println!(
        "\n{} buyers on {} server(s) raced for {} tickets: {} answered 201, {} sold out, \
         {} already had one, {} busy (503), {} errors.",
        r.buyers,
        r.servers,
        r.tickets,
        r.succeeded,
        r.sold_out,
        r.already_purchased,
        r.busy,
        r.errors
    );
    println!(
        "The database says: {} orders, stock {}. Verdict: {}.",
        r.db_orders, r.db_stock, r.verdict
    );
    if judgement.passed {
        println!(
            "\nPASSED. Exactly {} tickets, each to a buyer who was told so.",
            r.tickets
        );
        println!(
            "Compare with the level's own code: see {}.",
            exercise.lesson
        );
        return;
    }
    println!("\nNOT YET.");
    for finding in &judgement.findings {
        println!("- {finding}");
    }
    println!("\nThe likely cause: {}", exercise.likely_cause);
    match revealed {
        Some(n) => println!("\nHint {n} of {}: {}", hints.len(), hints[n - 1]),
        None if shown > 0 => println!(
            "\nEvery hint is shown ({}); read them again in exercises/{}/README.md, and the lesson in {}.",
            shown, exercise.slug, exercise.lesson
        ),
        None => {}
    }
}
