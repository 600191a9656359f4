//! `level2`: serves the ticket API with its concurrency control in PostgreSQL.
//!
//! Run with (two terminals, one shared database):
//!
//! ```text
//! cargo run --release -p level2 -- --port 8080 --strategy atomic
//! cargo run --release -p level2 -- --port 8081 --strategy atomic
//! ```

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ticket_core::server::init_tracing();
    level2::Cli::parse().start().await?.run_until_signal().await
}
