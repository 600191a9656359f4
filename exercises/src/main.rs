//! `exercise-server`: serves a workshop exercise like a level's binary.
//!
//! Run with (two terminals, one shared database):
//!
//! ```text
//! cargo run -p exercises -- --exercise 3 --port 8080 --think-time-ms 20
//! cargo run -p exercises -- --exercise 3 --port 8081 --think-time-ms 20
//! ```

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ticket_core::server::init_tracing();
    exercises::Cli::parse()
        .start()
        .await?
        .run_until_signal()
        .await
}
