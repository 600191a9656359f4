//! `level1`: serves the ticket API under a process-local lock.
//!
//! Run with (two terminals, one shared database):
//!
//! ```text
//! cargo run --release -p level1 -- --port 8080 --strategy mutex --think-time-ms 20
//! cargo run --release -p level1 -- --port 8081 --strategy mutex --think-time-ms 20
//! ```

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ticket_core::server::init_tracing();
    level1::Cli::parse().start().await?.run_until_signal().await
}
